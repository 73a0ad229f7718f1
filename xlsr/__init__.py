"""xlsr: wav2vec 2.0 / XLS-R pretraining."""

__version__ = "0.1.0"
