"""Sequence-level distillation: `python training/distill.py TEACHER --data-dir DIR --output-dir OUT ...`.

The same as `nat-hf distill`; the implementation is `nat_hf.distill`."""

from nat_hf.distill import main

if __name__ == "__main__":
    main()
