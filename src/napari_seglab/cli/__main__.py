"""``python -m napari_seglab.cli``: the ``seglab`` command line."""

from napari_seglab.cli import main

raise SystemExit(main())
