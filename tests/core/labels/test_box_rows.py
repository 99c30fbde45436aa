"""Box annotations: napari rectangles, boxes CSV files and per-plane arrays become the same rows."""

import numpy as np
import pytest

from napari_seglab.core.errors import InputError
from napari_seglab.core.labels import (
    boxes_array,
    boxes_to_rectangles,
    read_boxes_csv,
    rows_from_rectangles,
)


def _rect(y0, x0, y1, x1, *lead):
    corners = np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], float)
    return np.hstack([np.tile(np.asarray(lead, float), (4, 1)), corners]) if lead else corners


def test_rectangles_become_rows_and_back():
    rows = rows_from_rectangles([_rect(10, 20, 30, 45), _rect(1, 2, 5, 9)], classes=[1, 2])
    assert [(r["y0"], r["x0"], r["y1"], r["x1"], r["class"]) for r in rows] == [(10, 20, 30, 45, 1), (1, 2, 5, 9, 2)]
    again = rows_from_rectangles(boxes_to_rectangles(rows), classes=[r["class"] for r in rows])
    assert again == rows


def test_a_rectangle_drawn_from_any_corner_gives_the_same_box():
    flipped = np.array([[30, 45], [30, 20], [10, 20], [10, 45]], float)
    assert rows_from_rectangles([flipped]) == rows_from_rectangles([_rect(10, 20, 30, 45)])


def test_stack_rectangles_carry_their_plane():
    rows = rows_from_rectangles([_rect(0, 0, 4, 4, 3)])
    assert rows[0]["plane"] == "3"
    assert boxes_array(rows, (3,)).shape == (1, 5) and boxes_array(rows, (2,)).shape == (0, 5)


def test_non_rectangles_and_rotated_rectangles_are_refused():
    with pytest.raises(InputError, match="shape 2 is a ellipse"):
        rows_from_rectangles([_rect(0, 0, 4, 4), _rect(0, 0, 4, 4)], ["rectangle", "ellipse"], name="boxes")
    c, s = np.cos(0.3), np.sin(0.3)
    rotated = _rect(-5, -5, 5, 5) @ np.array([[c, -s], [s, c]])
    with pytest.raises(InputError, match="rotated"):
        rows_from_rectangles([rotated])
    with pytest.raises(InputError, match="several planes"):
        rows_from_rectangles([np.hstack([[[0], [0], [1], [1]], _rect(0, 0, 4, 4)])])


def test_boxes_csv_round_trip_and_clear_errors(tmp_path):
    good = tmp_path / "b.csv"
    good.write_text("y0,x0,y1,x1,class,score,plane\n1,2,5,9,2,0.5,\n0,0,3,3,,,\n")
    rows = read_boxes_csv(good)
    assert boxes_array(rows).tolist() == [[1, 2, 5, 9, 2], [0, 0, 3, 3, 1]]
    bad = tmp_path / "bad.csv"
    bad.write_text("y0,x0,y1\n1,2,3\n")
    with pytest.raises(InputError, match="no column x1"):
        read_boxes_csv(bad)
    empty = tmp_path / "empty.csv"
    empty.write_text("y0,x0,y1,x1\n5,5,5,9\n")
    with pytest.raises(InputError, match="line 2: empty box"):
        read_boxes_csv(empty)
    cls = tmp_path / "cls.csv"
    cls.write_text("y0,x0,y1,x1,class\n0,0,3,3,cell\n")
    with pytest.raises(InputError, match="class 'cell'"):
        read_boxes_csv(cls)
