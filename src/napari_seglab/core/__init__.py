"""Computation and file formats of napari-seglab.

Nothing in this package imports napari, qtpy or magicgui: it runs headless, in
a CLI, in a Dask worker and in tests without a display.
"""
