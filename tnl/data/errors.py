"""The one error type of tnl.data (its own module, so every data module can import it without import cycles)."""


class DataError(ValueError):
    """Bad data input or config: the message names the problem (the CLI prints it as one line)."""
