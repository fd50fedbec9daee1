"""``python train.py [overrides]``: train the seed's network with the config in conf/ (see README)."""

import gc

from twolayer_lightning.cli import main

if __name__ == "__main__":
    # The ~400k objects that importing torch, Lightning and Hydra created live as long as this
    # process: frozen, Python's full collections skip them (each took ~0.3 s on a 2-core VM, about
    # one per run) and look at the run's own objects only.
    gc.freeze()
    main()
