"""napari-seglab: paint, train and predict microscopy segmentation.

The computation lives in :mod:`napari_seglab.core`, which never imports napari
or Qt; the ``seglab`` command line (:mod:`napari_seglab.cli`) neither. Both
work in a plain ``pip install napari-seglab``. The napari dock widgets live in
:mod:`napari_seglab._widgets` and need the ``[napari]`` extra
(``pip install "napari-seglab[napari]"``). Importing this package imports
nothing else, so a Dask worker or a headless server pays for neither.
"""

__version__ = "0.1.0"
