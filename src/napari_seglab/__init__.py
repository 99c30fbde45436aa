"""napari-seglab: paint, train and predict microscopy segmentation.

The computation lives in :mod:`napari_seglab.core`, which never imports napari
or Qt; the napari dock widgets live in :mod:`napari_seglab._widgets`.
"""

__version__ = "0.1.0"
