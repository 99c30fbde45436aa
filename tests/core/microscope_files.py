"""Minimal, valid Leica LIF and Zeiss CZI files for the reader tests (neither reader package writes them).

Each writer lays out only what the format requires, as its reader (``liffile``, ``czifile``) parses
it: a LIF is a UTF-16 XML header followed by one memory block per image; a CZI is a file header
segment, one uncompressed sub-block per plane, a sub-block directory and an XML metadata segment.
"""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

import numpy as np

# ----------------------------------------------------------------------------- LIF

#: Leica dimension ids: X, Y, Z, T, M (mosaic tile)
_LIF_DIM = {"X": 1, "Y": 2, "Z": 3, "T": 4, "M": 10}


def _lif_element(name: str, data: np.ndarray, axes: str, pixel_um: dict[str, float], block: str) -> str:
    """The XML element of one image: C is the channel list, the other axes are dimensions (X fastest)."""
    channels = data.shape[axes.index("C")] if "C" in axes else 1
    dims = [a for a in reversed(axes) if a != "C"]  # X, Y, Z ... fastest first
    size = {a: data.shape[axes.index(a)] for a in dims}
    itemsize = data.dtype.itemsize
    plane = itemsize
    parts = []
    for a in dims[:2]:  # X, then Y: one channel's plane
        parts.append((a, plane))
        plane *= size[a]
    # channel c of a plane sits after c full (Y, X) planes; Z and T step over all channels
    chan_xml = "".join(
        f'<ChannelDescription DataType="0" ChannelTag="0" Resolution="{8 * itemsize}" NameOfMeasuredQuantity="" '
        f'Min="0" Max="0" Unit="" LUTName="Gray" IsLUTInverted="0" BytesInc="{c * plane}" BitInc="0"/>'
        for c in range(channels))
    stride = plane * channels
    for a in dims[2:]:
        parts.append((a, stride))
        stride *= size[a]
    dim_xml = ""
    for a, inc in parts:
        n = size[a]
        length = pixel_um.get(a, 1.0) * 1e-6 * (n - 1)
        dim_xml += (f'<DimensionDescription DimID="{_LIF_DIM[a]}" NumberOfElements="{n}" Origin="0" '
                    f'Length="{length!r}" Unit="m" BytesInc="{inc}" BitInc="0"/>')
    return (f'<Element Name="{name}" UniqueID="{uuid.uuid4()}"><Data><Image><ImageDescription>'
            f"<Channels>{chan_xml}</Channels><Dimensions>{dim_xml}</Dimensions></ImageDescription></Image></Data>"
            f'<Memory Size="{data.nbytes}" MemoryBlockID="{block}"/><Children/></Element>')


def _lif_bytes(data: np.ndarray, axes: str) -> bytes:
    """The memory block of an image: for each Z/T index, channel after channel of (Y, X) planes."""
    order = [a for a in axes if a not in "CYX"] + (["C"] if "C" in axes else []) + ["Y", "X"]
    return np.ascontiguousarray(np.transpose(data, [axes.index(a) for a in order])).astype("<" + data.dtype.str[1:]
                                                                                             ).tobytes()


def write_lif(path: Path, images: list[tuple[str, np.ndarray, str, dict[str, float]]]) -> Path:
    """A LIF (version 2) holding ``images``: (name, array, axes from "MTZCYX", {"X"/"Y"/"Z": µm})."""
    children = "".join(_lif_element(name, data, axes, um, f"MemBlock_{i + 1}")
                       for i, (name, data, axes, um) in enumerate(images))
    xml = (f'<LMSDataContainerHeader Version="2"><Element Name="{Path(path).stem}" UniqueID="{uuid.uuid4()}">'
           f'<Data><Experiment/></Data><Memory Size="0" MemoryBlockID="MemBlock_0"/>'
           f"<Children>{children}</Children></Element></LMSDataContainerHeader>")
    text = xml.encode("utf-16-le")
    out = struct.pack("<IIBI", 0x70, len(text) + 5, 0x2A, len(xml)) + text
    blocks = [("MemBlock_0", b"")] + [(f"MemBlock_{i + 1}", _lif_bytes(d, a)) for i, (_, d, a, _) in enumerate(images)]
    for block_id, payload in blocks:
        name = block_id.encode("utf-16-le")
        out += struct.pack("<IIBQBI", 0x70, 0, 0x2A, len(payload), 0x2A, len(block_id)) + name + payload
    Path(path).write_bytes(out)
    return Path(path)


# ----------------------------------------------------------------------------- CZI

_CZI_PIXEL = {np.dtype(np.uint8): 0, np.dtype(np.uint16): 1, np.dtype(np.float32): 2}


def _segment(sid: str, payload: bytes) -> bytes:
    """A ZISRAW segment: 16-byte id, allocated and used size, then the payload (padded to 32 bytes)."""
    pad = (-len(payload)) % 32
    return struct.pack("<16sqq", sid.encode(), len(payload) + pad, len(payload)) + payload + b"\0" * pad


def _dir_entry(dtype, position: int, dims: list[tuple[str, int, int]]) -> bytes:
    """A DirectoryEntryDV: pixel type, the sub-block's file position, its dimensions (X first in the file)."""
    out = struct.pack("<2siqiiBB4si", b"DV", _CZI_PIXEL[np.dtype(dtype)], position, 0, 0, 0, 0, b"\0" * 4, len(dims))
    for name, start, size in reversed(dims):  # the file lists X, Y, C, ...: czifile reverses them to C order
        out += struct.pack("<4siifi", name.encode(), start, size, 0.0, size)
    return out


def write_czi(path: Path, data: np.ndarray, axes: str, pixel_um: dict[str, float]) -> Path:
    """A CZI of ``data`` (axes from "SCZYX", Y and X last), one uncompressed sub-block per plane."""
    assert axes.endswith("YX")
    lead = axes[:-2]
    planes = list(np.ndindex(*data.shape[:-2]))
    header_size = 32 + 512
    blocks, entries, position = b"", [], header_size
    for index in planes:
        dims = [(a, int(i), 1) for a, i in zip(lead, index, strict=True)]
        dims += [("Y", 0, data.shape[-2]), ("X", 0, data.shape[-1])]
        pixels = np.ascontiguousarray(data[index]).astype("<" + data.dtype.str[1:]).tobytes()
        entry = _dir_entry(data.dtype, position, dims)
        body = struct.pack("<iiq", 0, 0, len(pixels)) + entry
        body += b"\0" * (256 - len(body)) + pixels  # pixel data starts 256 bytes into the sub-block
        segment = _segment("ZISRAWSUBBLOCK", body)
        blocks += segment
        entries.append(entry)
        position += len(segment)
    directory_position = position
    directory = _segment("ZISRAWDIRECTORY", struct.pack("<i", len(entries)) + b"\0" * 124 + b"".join(entries))
    metadata_position = directory_position + len(directory)
    distances = "".join(f'<Distance Id="{a}"><Value>{um * 1e-6!r}</Value></Distance>' for a, um in pixel_um.items())
    xml = (f"<ImageDocument><Metadata><Scaling><Items>{distances}</Items></Scaling></Metadata>"
           "</ImageDocument>").encode()
    metadata = _segment("ZISRAWMETADATA", struct.pack("<ii", len(xml), 0) + b"\0" * 248 + xml)
    guid = uuid.uuid4().bytes
    file_header = struct.pack("<iiii16s16siqqiq", 1, 0, 0, 0, guid, guid, 0, directory_position, metadata_position,
                              0, 0)
    head = struct.pack("<16sqq", b"ZISRAWFILE", 512, 512) + file_header + b"\0" * (512 - len(file_header))
    Path(path).write_bytes(head + blocks + directory + metadata)
    return Path(path)
