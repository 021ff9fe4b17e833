"""Train vicreg with cut-initialisation.

    python recipes/vicreg.py --backbone resnet18 --dataset builtin --epochs 1
    accelerate launch recipes/vicreg.py --backbone resnet50 --dataset uoft-cs/cifar10 --image-size 32

Every flag: `python recipes/vicreg.py --help`. The loop lives in :mod:`hub_cutinit.training`.
"""

from hub_cutinit.training import main

if __name__ == "__main__":
    main("vicreg")
