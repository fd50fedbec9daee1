"""``python train.py [overrides]``: train the seed's network with the config in conf/ (see README)."""

from twolayer_lightning.cli import main

if __name__ == "__main__":
    main()
