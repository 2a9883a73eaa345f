"""Speed benchmark: `python benchmarks/speed.py --system LABEL=MODEL[:opts] ... --source F --threads N`.

The same as `nat-hf bench speed`; the implementation is `nat_hf.bench`."""

from nat_hf.bench import main

if __name__ == "__main__":
    main()
