"""alignlab: preference-alignment research framework (SFT -> DPO on TRL, composed with Hydra)."""

__version__ = "0.1.0"
