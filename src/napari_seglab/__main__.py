"""``python -m napari_seglab``: the ``seglab`` command line."""

from napari_seglab.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
