"""What touches the outside world below the models: atomic file writes, the Hub's door (one
sentence when it is closed), the offline SmolLM2 folder, and progress for a person or a log."""
