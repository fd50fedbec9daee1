"""``python -m twolayer_lightning [overrides]``: the same entry as ``python train.py``."""

from twolayer_lightning.cli import main

if __name__ == "__main__":
    main()
