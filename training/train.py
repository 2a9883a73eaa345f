"""Train a NAT model: `python training/train.py CONFIG.yaml [section.key=value ...] [--resume]`.

The same as `nat-hf train`; the implementation is `nat_hf.train` (installed with the package so the command
line and multi-process launchers reach it: `torchrun --nproc_per_node 2 -m nat_hf.train ...`)."""

from nat_hf.train import main

if __name__ == "__main__":
    main()
