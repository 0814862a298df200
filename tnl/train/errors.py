"""The error a run reports before training starts (the CLI prints it as one line)."""


class SetupError(ValueError):
    """Missing or inconsistent inputs found before training starts (data, tokenizer, vocab, locks)."""
