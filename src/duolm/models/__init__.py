"""The networks, each under duolm.contracts.Backbone: the papers' DiT, the Ψ paper's image UNet, and
any Hugging Face causal LM (model=hf); the table of them with what each can do (backbones.BACKBONES)."""
