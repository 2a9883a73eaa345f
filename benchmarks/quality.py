"""Quality benchmark: `python benchmarks/quality.py --system LABEL=MODEL[:opts] ... --data-dir DIR --threads N`.

The same as `nat-hf bench quality`; the implementation is `nat_hf.quality`."""

from nat_hf.quality import main

if __name__ == "__main__":
    main()
