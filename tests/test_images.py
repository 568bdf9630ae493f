"""Images: pixel tokens, the image store, class conditioning and guidance, FID / IS, pictures."""

import numpy as np
import pytest
import torch
from oracles import all_sequences, oracle_posterior_marginals, random_joint
from said_as import raises_said_as
from scipy.stats import chisquare

from duolm.contracts import Capabilities
from duolm.core.conditioning import drop_labels, null_labels, with_labels
from duolm.core.methods import build_method
from duolm.core.schedules import LogLinear
from duolm.data.images import build_image_splits, horizontal_flip
from duolm.data.tokenizers import PixelTokenizer, load_tokenizer
from duolm.evaluation.image_metrics import feature_statistics, frechet_distance, inception_score

# --- pixel tokens ------------------------------------------------------------------------------------

@pytest.mark.parametrize("levels", [2, 3, 16, 17, 100, 255, 256])
def test_decoding_then_encoding_gives_back_every_level(levels):
    tok = PixelTokenizer(levels, 1, 16, 0)
    ids = np.resize(np.arange(levels), (1, 256))  # every level at least once
    np.testing.assert_array_equal(tok.encode_pixels(tok.decode_pixels(ids)), ids)
    # the decoded gray levels span black to white
    assert tok.decode_pixels(np.zeros((1, 256), dtype=np.int64)).max() == 0
    assert tok.decode_pixels(np.full((1, 256), levels - 1)).min() == 255


def test_8_bit_images_round_trip_exactly_at_256_levels_channel_major():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 3, 4, 4), dtype=np.uint8)
    tok = PixelTokenizer(256, 3, 4, 10)
    ids = tok.encode_pixels(images)
    assert ids.shape == (5, 48)
    np.testing.assert_array_equal(ids[:, :16], images[:, 0].reshape(5, 16))  # `b (c h w)`: red plane first
    np.testing.assert_array_equal(tok.decode_pixels(ids), images)
    assert load_tokenizer(tok.to_dict()).to_dict() == tok.to_dict()


def test_digits_keep_their_17_gray_levels_and_coarser_levels_quantise():
    tok = PixelTokenizer(17, 1, 8, 10)
    values = np.arange(17).reshape(1, 1, 1, 17).repeat(8, 2)[..., :8]
    np.testing.assert_array_equal(tok.encode_pixels(values, max_value=16).reshape(8, 8)[0], np.arange(8))
    coarse = PixelTokenizer(4, 1, 1, 0)
    got = coarse.encode_pixels(np.array([0, 63, 64, 127, 128, 255]).reshape(6, 1, 1, 1)).ravel()
    np.testing.assert_array_equal(got, [0, 0, 1, 1, 2, 3])


def test_bad_image_settings_are_one_sentence():
    with raises_said_as("data.levels must be at most 256"):
        PixelTokenizer(300, 1, 8)
    with raises_said_as("data.channels"):
        PixelTokenizer(16, 0, 8)
    with raises_said_as("do not match data.channels=1"):
        PixelTokenizer(16, 1, 8).encode_pixels(np.zeros((2, 3, 8, 8)))


# --- the store ---------------------------------------------------------------------------------------

def test_digits_become_a_labelled_store_read_back_by_memory_map(tmp_path):
    tok, splits = build_image_splits("digits", None, tmp_path)
    assert tok.vocab_size == 17 and tok.length == 64
    train, valid = splits["train"], splits["valid"]
    assert (len(train), len(valid)) == (1618, 179)  # every tenth of the 1,797 images is validation
    ids, valid_mask, label = train.block(5)
    assert ids.shape == (64,) and valid_mask.all() and 0 <= int(label) < 10
    assert np.bincount(train.labels().numpy(), minlength=10).min() > 140  # every digit is there
    counts = train.token_counts(17)
    assert counts.sum() == 1618 * 64 and counts[0] > counts[16] > 0
    # a second call maps the same files
    _, again = build_image_splits("digits", None, tmp_path)
    assert again["train"].directory == train.directory
    torch.testing.assert_close(again["train"].ids, train.ids)


def test_a_truncated_image_store_is_rebuilt(tmp_path):
    _, splits = build_image_splits("digits", 8, tmp_path)
    pixels = splits["train"].directory / "pixels.bin"
    data = pixels.read_bytes()
    pixels.write_bytes(data[: len(data) // 2])
    _, rebuilt = build_image_splits("digits", 8, tmp_path)
    assert (rebuilt["train"].directory / "pixels.bin").stat().st_size == len(data)
    assert int(rebuilt["train"].ids.max()) == 7


def _cifar_like_parquet(tmp_path, n_train=12, n_test=5):
    """Local parquet files with the schema of Hugging Face's uoft-cs/cifar10 (img: Image, label: ClassLabel)."""
    import datasets
    from PIL import Image

    rng = np.random.default_rng(1)
    out, arrays = {}, {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).tolist()
        features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
        ds = datasets.Dataset.from_dict({"img": [Image.fromarray(a) for a in images], "label": labels},
                                        features=features)
        path = tmp_path / f"{split}.parquet"
        ds.to_parquet(str(path))
        out[split], arrays[split] = str(path), (images, labels)
    return out, arrays


def test_cifar10_reads_the_hugging_face_schema_from_local_files(tmp_path):
    files, arrays = _cifar_like_parquet(tmp_path)
    tok, splits = build_image_splits("cifar10", None, tmp_path / "cache", files)
    assert (tok.channels, tok.image_size, tok.vocab_size, tok.length) == (3, 32, 256, 3072)
    assert (len(splits["train"]), len(splits["valid"])) == (12, 5)
    images, labels = arrays["test"]
    np.testing.assert_array_equal(tok.decode_pixels(splits["valid"].ids.numpy()), images.transpose(0, 3, 1, 2))
    assert splits["valid"].labels().tolist() == labels


def test_horizontal_flips_mirror_the_chosen_images_only():
    x = torch.arange(2 * 3 * 4 * 4).reshape(2, 48) % 256
    flipped = horizontal_flip(x, 3, 4, generator=torch.Generator().manual_seed(0))
    chosen = torch.rand(2, generator=torch.Generator().manual_seed(0)) < 0.5
    for b in range(2):
        img = x[b].reshape(3, 4, 4)
        expect = img.flip(-1) if chosen[b] else img
        assert torch.equal(flipped[b].reshape(3, 4, 4), expect)


# --- conditioning and guidance --------------------------------------------------------------------------

def test_label_dropout_replaces_the_given_share_with_the_null_label():
    labels = torch.randint(0, 10, (20000,), generator=torch.Generator().manual_seed(0))
    out = drop_labels(labels, 0.1, 10, generator=torch.Generator().manual_seed(1))
    dropped = out == 10
    assert abs(dropped.double().mean().item() - 0.1) < 0.01
    assert torch.equal(out[~dropped], labels[~dropped])
    assert drop_labels(labels, 0.0, 10) is labels


class OracleClassBackbone(torch.nn.Module):
    """A class-conditional 'network' that knows the answer: for label c the exact p(x_0 | x_t) of
    class c's distribution; the null label gets the mixture of the classes (uniform prior)."""

    def __init__(self, process, joints, L):
        super().__init__()
        self.process, self.joints, self.L = process, joints, L
        self.seqs = all_sequences(process.num_states, L)
        self.config = type("C", (), {"num_classes": len(joints)})()
        self.capabilities = Capabilities(class_conditioning=True, time_conditioning=True)

    def forward(self, x, sigma, class_cond=None, weights=None):
        alpha = torch.exp(-sigma.double()).reshape(-1, 1)
        joints = [*self.joints, torch.stack(self.joints).mean(0)]
        out = torch.zeros(*x.shape, self.process.num_states, dtype=torch.float64)
        for c, joint in enumerate(joints):
            rows = class_cond == c
            if rows.any():
                out[rows] = oracle_posterior_marginals(self.process, self.seqs, joint, x[rows], alpha[rows],
                                                       exclude_self=True)
        return out.clamp_min(1e-300).log().float()


def test_every_sampler_draws_each_class_and_guidance_mixes_the_class_and_null_predictions():
    """Duo (uniform state, K = 3, one token) with an exact class-conditional denoiser: samples of
    class c follow class c's distribution, null labels follow the mixture, for ancestral, psi and the
    greedy-tail-free ancestral ends (chi-square, p > 1e-3, n = 3000 per class); weight w mixes the log
    predictions as normalise(w log p_c + (1 - w) log p_null) for any real w."""
    from duolm.sampling import PsiOptions, SamplerSpec, SamplingModel
    from duolm.sampling.generate import sample_batch
    from duolm.sampling.kappa import Kappa, KappaSchedule

    method = build_method("duo_base", 3, schedule=LogLinear(eps=0.0))
    joints = [random_joint(3, 1, seed=1), random_joint(3, 1, seed=2)]
    net = OracleClassBackbone(method.process, joints, 1)
    n = 3000
    pc = KappaSchedule(Kappa("max-capped", 0.05), Kappa("max-capped", 0.05), Kappa("max-capped", 0.05))
    for spec in (SamplerSpec("ancestral", steps=4, noise_removal="ancestral", eps=1e-4),
                 SamplerSpec("psi", steps=4, noise_removal="ancestral", eps=1e-4, options=PsiOptions(kappa=pc))):
        for c, joint in enumerate([*joints, torch.stack(joints).mean(0)]):
            labels = torch.full((n,), c)
            x = sample_batch(method, net, spec, n, 1, bos_id=0, generator=torch.Generator().manual_seed(c),
                             labels=labels)
            counts = torch.bincount(x[:, 0], minlength=3).double()
            assert chisquare(counts.numpy(), (joint * n).numpy()).pvalue > 1e-3, (spec.predictor, c)
    x_t, alpha = torch.tensor([[1]]), torch.tensor([0.3])
    labels = torch.tensor([0])
    cond = SamplingModel.from_method(method, net, labels=labels).denoiser(x_t, alpha)
    uncond = SamplingModel.from_method(method, net, labels=null_labels(1, 2)).denoiser(x_t, alpha)
    assert torch.equal(SamplingModel.from_method(method, net, labels=labels, guidance=1.0).denoiser(x_t, alpha), cond)
    torch.testing.assert_close(SamplingModel.from_method(method, net, labels=labels, guidance=0.0).denoiser(x_t, alpha),
                               uncond)
    for w in (0.5, 1.7, 3.0, -0.5):
        got = SamplingModel.from_method(method, net, labels=labels, guidance=w).denoiser(x_t, alpha)
        torch.testing.assert_close(got, (w * cond + (1 - w) * uncond).log_softmax(-1))
    assert not torch.allclose(cond, uncond)


def test_the_papers_guided_path_calls_itself_with_self_twice():
    """Why duolm guides through a denoiser wrapper: the reference's guided branch (weights other than
    0 and 1) is `self._get_guided_posterior_from_xt(self, xt, ...)`, a bound method given `self` again,
    so every argument shifts by one and the call fails. Shown here on a stand-in with the same shape."""
    class Reference:
        def _get_guided_posterior_from_xt(self, xt, sigma, labels, gamma, alpha_s, alpha_t, p_x0=None):
            return xt

        def guided(self):
            return self._get_guided_posterior_from_xt(self, "xt", "sigma", "labels", 2.0, "a_s", "a_t", None)

    with pytest.raises(TypeError):
        Reference().guided()


def test_a_class_conditional_dit_uses_its_labels_and_an_unconditional_one_refuses_them():
    from duolm.models.dit import DiT, DiTConfig

    torch.manual_seed(0)
    net = DiT(DiTConfig(vocab_size=11, hidden_size=32, cond_dim=16, n_blocks=1, n_heads=2, dropout=0.0,
                        num_classes=4)).eval()
    with torch.no_grad():  # the DiT starts with a zero output layer; any weights will do here
        for p in net.parameters():
            p.normal_(0, 0.2)
    x, sigma = torch.randint(0, 11, (2, 6)), torch.tensor([0.5, 0.5])
    with torch.no_grad():
        a = net(x, sigma, class_cond=torch.tensor([0, 0]))
        b = net(x, sigma, class_cond=torch.tensor([3, 4]))
        bound = with_labels(net, torch.tensor([3, 4]))(x, sigma)
    assert not torch.allclose(a, b) and torch.equal(b, bound)
    plain = DiT(DiTConfig(vocab_size=11, hidden_size=32, cond_dim=16, n_blocks=1, n_heads=2, dropout=0.0))
    with pytest.raises(ValueError, match="unconditional"):
        plain(x, sigma, class_cond=torch.tensor([0, 1]))


def test_the_objective_binds_labels_with_dropout_and_refuses_missing_ones():
    from duolm.training.objectives import Nelbo

    seen = []

    class Spy(torch.nn.Module):
        capabilities = Capabilities(class_conditioning=True, time_conditioning=True)

        def forward(self, x, sigma, class_cond=None, weights=None):
            seen.append(class_cond)
            return torch.zeros(*x.shape, 5)

    method = build_method("duo_base", 5)
    obj = Nelbo(method, num_classes=10, class_dropout=0.5)
    x0 = torch.randint(0, 5, (400, 3))
    labels = torch.randint(0, 10, (400,))
    obj.token_loss(Spy(), x0, None, step=0, generator=torch.Generator().manual_seed(0), labels=labels)
    got = seen[-1]
    assert 0.4 < (got == 10).double().mean() < 0.6 and torch.equal(got[got != 10], labels[got != 10])
    with pytest.raises(ValueError, match="needs each example's label"):
        obj.token_loss(Spy(), x0, None, step=0)
    with pytest.raises(ValueError, match="unconditional"):
        Nelbo(method).token_loss(Spy(), x0, None, step=0, labels=labels)


# --- FID and IS ------------------------------------------------------------------------------------------

def test_frechet_distance_of_gaussians_is_the_closed_form():
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    cov_a, cov_b = a @ a.T + np.eye(6), b @ b.T + 0.5 * np.eye(6)
    mu_a, mu_b = rng.normal(size=6), rng.normal(size=6)
    expect = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * sqrtm(cov_a @ cov_b).real)
    assert frechet_distance(mu_a, cov_a, mu_b, cov_b) == pytest.approx(expect, rel=1e-9)
    # diagonal: sum (s_a + s_b - 2 sqrt(s_a s_b)) + |mu_a - mu_b|^2
    d = frechet_distance(np.zeros(3), np.diag([1.0, 4.0, 9.0]), np.ones(3), np.diag([4.0, 4.0, 1.0]))
    assert d == pytest.approx(3 + (1 + 4 - 4) + 0 + (9 + 1 - 6), rel=1e-12)


def test_fid_of_a_sample_against_itself_is_zero_and_against_a_shift_is_the_shift():
    x = torch.randn(4000, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    stats = feature_statistics(x)
    assert abs(frechet_distance(*stats, *stats)) < 1e-8
    shifted = feature_statistics(x + torch.tensor([2.0, 0, 0, 0, 0], dtype=torch.float64))
    assert frechet_distance(*stats, *shifted) == pytest.approx(4.0, rel=1e-9)


def test_inception_score_is_one_for_uninformative_and_k_for_confident_balanced_predictions():
    assert inception_score(torch.full((100, 10), 0.1), splits=1)[0] == pytest.approx(1.0)
    confident = torch.eye(10).repeat(10, 1)
    assert inception_score(confident, splits=1)[0] == pytest.approx(10.0, rel=1e-6)


def test_the_classifier_features_tell_real_digits_from_shuffled_pixels(tmp_path):
    """Held-out real digits are close to the training digits in the classifier's feature space
    (FID 29 here: 179 images against 1,618 in 128 dimensions, so mostly the estimator's small-sample
    bias) and recognised (accuracy > 0.9); the same images with their pixels shuffled are far (FID
    426, more than 10x) and their IS drops."""
    from duolm.evaluation.image_metrics import cached_classifier, image_quality

    tok, splits = build_image_splits("digits", None, tmp_path)
    train, valid = splits["train"], splits["valid"]
    real = tok.decode_pixels(train.ids.numpy())
    held = tok.decode_pixels(valid.ids.numpy())
    net, info = cached_classifier("digits-test", tmp_path, (real, train.labels().numpy()),
                                  (held, valid.labels().numpy()), 10)
    assert info["valid_accuracy"] > 0.9
    good = image_quality(held, valid.labels().tolist(), real, features="classifier", classifier=net)
    perm = np.random.default_rng(0).permutation(64)
    shuffled = held.reshape(len(held), 1, 64)[:, :, perm].reshape(held.shape)
    bad = image_quality(shuffled, valid.labels().tolist(), real, features="classifier", classifier=net)
    assert good["classifier_accuracy"] > 0.9 and bad["classifier_accuracy"] < 0.5
    assert bad["classifier_fid"] > 10 * good["classifier_fid"]
    assert good["classifier_is"] > 2 * bad["classifier_is"]
    # cached: a second call loads the same weights
    net2, _ = cached_classifier("digits-test", tmp_path, (real, train.labels().numpy()),
                                (held, valid.labels().numpy()), 10)
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), net2.parameters()))


# --- pictures -------------------------------------------------------------------------------------------

def test_the_grid_has_a_row_per_class(tmp_path):
    from PIL import Image

    from duolm.evaluation.pictures import sample_grid

    images = np.stack([np.full((1, 8, 8), 20 * i, dtype=np.uint8) for i in range(7)])
    labels = [0, 1, 0, 2, 1, 0, None]
    path = sample_grid(images, labels, tmp_path / "g.png")
    grid = np.asarray(Image.open(path))
    scale = 12  # 8-pixel digits are drawn 96 pixels wide
    assert grid.shape == (4 * (8 * scale + 1) + 1, 3 * (8 * scale + 1) + 1)  # classes 0, 1, 2, unconditional
    cell = 8 * scale + 1
    assert grid[1 + 2, 1 + 2] == 0 and grid[1 + 2, 1 + cell + 2] == 40 and grid[1 + 2, 1 + 2 * cell + 2] == 100
    assert grid[1 + 3 * cell + 2, 1 + 2] == 120  # the unconditional sample, last row
