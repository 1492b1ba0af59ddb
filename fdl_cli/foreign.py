"""Files and folders fdl does not read, told by what they are: other frameworks' saves (Keras, TensorFlow,
Flax, Orbax, ONNX, GGUF), archives, compressed files and downloads not finished.

Each is told by its name, its first bytes or a few marker names in its folder, never by importing the
framework or running anything. The folder scan (`checkpoints._scan_folder`) asks only about what it skips
already: a file's name (`of_name`), the first bytes of a file without a suffix or of an `.h5`, and the
marker files of a sub-folder that holds no checkpoint (`of_folder`). `checkpoints._peek_file`, which has
read a file's first bytes already, asks `of_head`.
"""

from __future__ import annotations

import glob
import itertools
import os
import re
import stat
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Foreign:
    """What a file or folder fdl does not read is (`what`, as "skipped NAME: WHAT" or "PATH is WHAT" say it)
    and how to get from it what fdl reads (`fix`)."""

    what: str
    fix: str
    #: another framework's weights (said ", not PyTorch weights"), rather than a file not yet a checkpoint
    framework: bool = True


_PYTORCH = "fdl reads PyTorch weights (.pt/.bin/.safetensors files, Hugging Face and DCP folders): "


def _framework(what: str, read: str, hugging_face: str = "") -> Foreign:
    """Another framework's save, its fix: `read` its arrays with the framework's own tool, copy them into the
    PyTorch model's state_dict and save that; and, for a Hugging Face model, its transformers conversion."""
    return Foreign(what, f"{_PYTORCH}{read}, then build the model in PyTorch (the --model factory), copy each array "
                   "into its state_dict under the matching name (a Dense kernel is (in, out): transpose it for "
                   "nn.Linear), and save one file per step: torch.save(model.state_dict(), 'step_N.pt') or "
                   "safetensors' save_file" + (f"; a Hugging Face model converts with from_pretrained(FOLDER, "
                                               f"{hugging_face}).save_pretrained(OUT)" if hugging_face else ""))


_KERAS_READ = "load it in Keras and read each layer's arrays (layer.get_weights())"
KERAS = _framework("a Keras model (.keras)", _KERAS_READ)
#: a Hugging Face TF model's tf_model.h5 is one (Keras' save_weights), which transformers 4 reads with from_tf=True
KERAS_H5 = _framework("a Keras model or its weights, saved as HDF5", _KERAS_READ, "from_tf=True")
SAVED_MODEL = _framework("a TensorFlow SavedModel folder (saved_model.pb, variables/)",
                         "read its variables with tf.train.load_checkpoint('FOLDER/variables/variables') "
                         "(get_tensor(name) for each name of its get_variable_to_shape_map())")
TF_CHECKPOINT = _framework("a TensorFlow checkpoint (PREFIX.index beside PREFIX.data-NNNNN-of-NNNNN)",
                           "read it with tf.train.load_checkpoint(PREFIX) (the path without .index; get_tensor(name) "
                           "for each name of its get_variable_to_shape_map())", "from_tf=True")
FLAX = _framework("a Flax checkpoint (msgpack, flax.serialization)",
                  "read it with flax.serialization.msgpack_restore(open(FILE, 'rb').read())", "from_flax=True")
ORBAX = _framework("an Orbax checkpoint folder (JAX)", "restore it with orbax.checkpoint (e.g. "
                   "orbax.checkpoint.StandardCheckpointer().restore(FOLDER))")
ONNX = Foreign(
    "an ONNX model (an exported graph)",
    _PYTORCH + "analyse the checkpoints saved while training (torch.save(model.state_dict(), ...)); the ONNX "
    "file's own weights are its graph's initializers (onnx.numpy_helper.to_array of each of "
    "onnx.load(FILE).graph.initializer), which a PyTorch state_dict saved with torch.save can be built from")
GGUF = Foreign(
    "a GGUF file (llama.cpp's format, often quantised)",
    _PYTORCH + "analyse the checkpoints it was converted from; or have transformers read it, dequantised "
    "(AutoModelForCausalLM.from_pretrained(FOLDER, gguf_file=NAME)), and save_pretrained(OUT) a folder fdl reads")
NPZ = Foreign(
    "a NumPy archive (.npz), not a checkpoint",
    _PYTORCH + "make tensors of it under the names of the --model's state_dict: torch.save({name: "
    "torch.from_numpy(array) for name, array in np.load(FILE).items()}, 'step_N.pt'), renamed and (JAX or Keras "
    "kernels) transposed as the model needs", framework=False)
ZIP = Foreign("a zip archive", "fdl reads no archive: unpack it (unzip FILE -d OUT) and give fdl the folder it "
              "holds, or its checkpoints", framework=False)
TAR = Foreign("a tar archive", "fdl reads no archive: unpack it (mkdir -p OUT && tar -xf FILE -C OUT) and give fdl "
              "the folder it holds, or its checkpoints", framework=False)
DOWNLOAD = Foreign(
    "a download not finished (.incomplete, .part, .crdownload: renamed once whole)",
    "wait for the download to finish, then run fdl again on the file it becomes; if it stopped, download it again",
    framework=False)
LOCK = Foreign(
    "a lock file (held by a download or a save in progress), no checkpoint",
    "wait for the download or save to finish, then run fdl again on the file it makes (the name without .lock); "
    "a lock no process holds is left over and may be removed", framework=False)


def _compressed(tool: str, command: str, piped: str) -> Foreign:
    """`command` keeps FILE and needs its suffix (.gz); `piped` writes to stdout whatever the name (a gzip told
    by its first bytes, named step_100.pt: `gunzip -k` refuses it, "unknown suffix")."""
    return Foreign(f"a {tool}-compressed file", f"fdl reads checkpoints uncompressed: decompress it first "
                   f"({command} FILE keeps FILE and writes it without its suffix; a file named otherwise: {piped} "
                   "FILE > OUT) and give fdl that file", framework=False)


GZIP = _compressed("gzip", "gunzip -k", "gunzip -c")
ZSTD = _compressed("zstd", "zstd -d", "zstd -dc")
XZ = _compressed("xz", "xz -dk", "xz -dc")
BZIP2 = _compressed("bzip2", "bunzip2 -k", "bunzip2 -c")
LZ4 = _compressed("lz4", "lz4 -d", "lz4 -dc")

KINDS = (KERAS, KERAS_H5, SAVED_MODEL, TF_CHECKPOINT, FLAX, ORBAX, ONNX, GGUF, NPZ, ZIP, TAR, DOWNLOAD, LOCK,
         GZIP, ZSTD, XZ, BZIP2, LZ4)

_BY_SUFFIX = {
    ".keras": KERAS, ".msgpack": FLAX, ".onnx": ONNX, ".gguf": GGUF, ".zip": ZIP, ".tar": TAR, ".tgz": TAR,
    ".incomplete": DOWNLOAD, ".part": DOWNLOAD, ".partial": DOWNLOAD, ".crdownload": DOWNLOAD,
    ".download": DOWNLOAD, ".lock": LOCK, ".gz": GZIP, ".zst": ZSTD, ".xz": XZ, ".bz2": BZIP2, ".lz4": LZ4,
}
_BY_MAGIC = (
    (b"GGUF", GGUF), (b"\x1f\x8b", GZIP), (b"\x28\xb5\x2f\xfd", ZSTD), (b"\xfd7zXZ\x00", XZ),
    (b"\x04\x22\x4d\x18", LZ4),
)
#: A TensorFlow checkpoint's data shard: PREFIX.data-00000-of-00001
_TF_DATA = re.compile(r".+\.data-\d{5}-of-\d{5}")
#: The markers of a folder another framework saved: any one tells it
_FOLDER_MARKERS = (("saved_model.pb", SAVED_MODEL), ("saved_model.pbtxt", SAVED_MODEL),
                   ("_CHECKPOINT_METADATA", ORBAX), ("_METADATA", ORBAX), ("manifest.ocdbt", ORBAX))
#: An ONNX ModelProto as exporters write it: ir_version (field 1), then producer_name (field 2)
_ONNX_HEAD = re.compile(rb"\x08[\x01-\x7f]\x12[\x01-\x7f](?:pytorch|tf2onnx|keras2onnx|skl2onnx|onnxmltools|onnx)")
#: The first member of a zip torch.save (ARCHIVE/data.pkl) or torch.jit.save (ARCHIVE/data/0, code/...) writes: a
#: checkpoint named .zip or .tar (PyTorch's tutorial names a general checkpoint `.tar`), no archive to unpack. A
#: member below data/, code/ or .data/ is one of their files (a TorchScript program's first is ARCHIVE/data/0)
_TORCH_ZIP_MEMBER = re.compile(rb"[^/]+/(?:data\.pkl|constants\.pkl|version|(?:data|code|\.data)/.*)", re.DOTALL)
#: Each entry torch.save or torch.jit.save writes in its zip, after the folder all its entries share (ARCHIVE/);
#: a zip holding anything else (a checkpoint folder zipped: its config.json, its directory entries) is an archive
_TORCH_ZIP_ENTRY = re.compile(r"data\.pkl|version|byteorder|\.format_version|\.storage_alignment|constants\.pkl"
                              r"|data/[^/]+|(?:\.data|code|extra|constants)/.+")
#: The pickle stream torch.save wrote before PyTorch 1.6 (and with _use_new_zipfile_serialization=False): its
#: PROTO, a FRAME at protocol 4 or 5, then torch's magic number 0x1950a86a20f9469cfc6c as a LONG1
_TORCH_PICKLE_HEAD = re.compile(rb"\x80[\x02-\x05](?:\x95.{8})?\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19",
                                re.DOTALL)
#: The members of the tar torch.save wrote in PyTorch 0.1, which torch.load still reads (its `legacy_load`, by
#: full unpickling only); the few first headers of a tar are read to tell it, never more
TORCH_TAR_MEMBERS = ("sys_info", "pickle", "storages", "tensors")
#: How many first bytes of an HDF5 file are searched for Keras' root attribute (its object header is near the start)
_H5_SNIFF = 1 << 16


def _is_msgpack_map(head: bytes) -> bool:
    """Whether `head` begins as a msgpack map of string keys (flax.serialization.to_bytes of a dict). A pickle
    never begins so: its first byte is PROTO (0x80) or an ASCII opcode; nor does a safetensors file, whose JSON
    header follows its 8-byte length (which may begin as such a map)."""
    first = head[:1]
    if head[8:10] == b'{"':
        return False
    if first and 0x81 <= first[0] <= 0x8F:  # a fixmap: its first key follows
        key = head[1:2]
    elif first in (b"\xde", b"\xdf"):  # map 16, map 32: after its 2- or 4-byte size
        key = head[3:4] if first == b"\xde" else head[5:6]
    else:
        return False
    return bool(key) and (0xA1 <= key[0] <= 0xBF or key[0] in (0xD9, 0xDA, 0xDB))


def of_name(path: Path) -> Foreign | None:
    """What `path`'s name says it is (a TensorFlow index is confirmed by its data shard beside it), or None.
    Reads no file."""
    name = path.name.lower()
    if name.endswith((".tar.gz", ".tar.zst", ".tar.xz", ".tar.bz2")):
        return TAR
    if name.endswith(".weights.h5"):  # Keras 3's save_weights demands the suffix
        return KERAS_H5
    if name == "saved_model.pb":
        return SAVED_MODEL
    if _TF_DATA.fullmatch(name):
        return TF_CHECKPOINT
    if name.endswith(".index") and any(path.parent.glob(glob.escape(path.name[: -len(".index")]) + ".data-*")):
        return TF_CHECKPOINT
    return _BY_SUFFIX.get(path.suffix.lower())


def of_head(head: bytes) -> Foreign | None:
    """What a file's first bytes say it is (a magic number, a msgpack map, an ONNX model), or None."""
    found = next((kind for magic, kind in _BY_MAGIC if head.startswith(magic)), None)
    if found is not None:
        return found
    if head[:3] == b"BZh" and head[3:4].isdigit():
        return BZIP2
    if len(head) > 262 and head[257:262] == b"ustar":
        return TAR
    if _ONNX_HEAD.match(head):
        return ONNX
    if head.startswith(b"model_checkpoint_path:"):  # the `checkpoint` file beside TensorFlow's, naming the latest
        return TF_CHECKPOINT
    return FLAX if _is_msgpack_map(head) else None


def _is_archive(kind: Foreign, head: bytes) -> bool:
    """Whether the first bytes of a file named .zip or .tar are that archive's (torch.save's told apart by
    `torch_save`)."""
    if kind is TAR:
        return len(head) > 262 and head[257:262] == b"ustar"
    return head[:4] in (b"PK\x03\x04", b"PK\x05\x06")  # a zip, or an empty one


def _torch_zip(path: Path, head: bytes) -> bool:
    """Whether the zip `path` is torch.save's (or torch.jit.save's): each entry `_TORCH_ZIP_ENTRY` under one
    folder, its data.pkl and version among them; or one cut short (no central directory: a download stopped, a
    save not finished) whose first member is torch's. Reads its central directory only if its first member
    (`head`) is torch's: a real archive costs no more than its first bytes."""
    size = int.from_bytes(head[26:28], "little")
    if head[:4] != b"PK\x03\x04" or not _TORCH_ZIP_MEMBER.fullmatch(head[30:30 + size]):
        return False
    try:
        with zipfile.ZipFile(path) as archive:  # the end record and the central directory it points to
            names = archive.namelist()
    except (zipfile.BadZipFile, ValueError):
        # cut short, or a damaged directory (an entry flagged UTF-8 whose name is not: UnicodeDecodeError): read
        # as a checkpoint, whose error says so
        return True
    except OSError:
        return False
    folder = names[0].split("/", 1)[0] + "/"
    return ({f"{folder}data.pkl"} <= set(names) and bool({f"{folder}version", f"{folder}.data/version"} & set(names))
            and all(name.startswith(folder) and _TORCH_ZIP_ENTRY.fullmatch(name[len(folder):]) for name in names))


def torch_tar(path: Path) -> bool:
    """Whether the tar `path` is the one torch.save wrote in PyTorch 0.1 (`TORCH_TAR_MEMBERS`, no other): at most
    its first five headers are read, skipping the members' contents."""
    try:
        with tarfile.open(path, "r:") as archive:
            names = [member.name for member in itertools.islice(archive, len(TORCH_TAR_MEMBERS) + 1)]
    except (tarfile.TarError, OSError, EOFError):
        return False
    return {"pickle", "storages", "tensors"} <= set(names) <= set(TORCH_TAR_MEMBERS) and len(names) == len(set(names))


def torch_save(path: Path, head: bytes | None = None) -> bool:
    """Whether the regular file `path` (its first bytes `head`, read here when not given) is one torch.save wrote,
    whatever its name: a zip of torch's (`_torch_zip`), the pickle stream PyTorch wrote before 1.6, or PyTorch 0.1's
    tar (`torch_tar`). What a folder scan asks of a file named .zip or .tar: never unpacked nor unpickled."""
    head = head if head is not None else head_of(path, 512)
    if not head:
        return False
    if _TORCH_PICKLE_HEAD.match(head):
        return True
    if len(head) > 262 and head[257:262] == b"ustar":
        first = head[:100].split(b"\0", 1)[0].decode("latin-1")  # a run's tarball: run/..., no header more read
        return (first in TORCH_TAR_MEMBERS or head[156:157] in (b"x", b"g")) and torch_tar(path)
    return _torch_zip(path, head)


def head_of(path: Path, size: int) -> bytes | None:
    """The first `size` bytes of the regular file `path`, or None (not a regular file, unreadable, gone). Opened
    without waiting (O_NONBLOCK), and its type checked on the file opened: a named pipe put in its place after a
    listing is not waited on."""
    try:
        handle = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError:
        return None
    try:
        return os.read(handle, size) if stat.S_ISREG(os.fstat(handle).st_mode) else None
    except OSError:
        return None
    finally:
        os.close(handle)


def keras_h5(path: Path) -> bool:
    """Whether the HDF5 file `path` is Keras' (the attribute keras_version its model and weights files carry,
    among its first bytes; Keras 3's weights file by its name, `of_name`). A plain read: no HDF5 lock is taken,
    so an fdl store another process writes is not disturbed."""
    return b"keras_version" in (head_of(path, _H5_SNIFF) or b"")


def of_file(path: Path, head: bytes | None = None, *, torch_checked: bool = False) -> Foreign | None:
    """What the file `path` is, by its name, else by its first bytes (`head`, read here when not given: only for
    a name without a suffix, whose format no name tells, an HDF5 file, or a .zip or .tar, which may be a
    torch.save file so named: `torch_checked`, it is known not to be). None: not one fdl knows to be foreign."""
    kind = of_name(path)
    suffix = path.suffix.lower()
    if kind is not None and not (kind in (ZIP, TAR) and suffix in (".zip", ".tar")):
        return kind
    if head is None and (suffix not in ("", ".h5", ".hdf5", ".zip", ".tar") or not path.is_file()):
        return None  # not a regular file (a named pipe, opened, waits for a writer), or no need to read it
    if kind is not None:
        head = head if head is not None else head_of(path, 512)
        return kind if head is not None and _is_archive(kind, head) and (torch_checked or not torch_save(path, head)) \
            else None
    if suffix in (".h5", ".hdf5") or (head or b"").startswith(b"\x89HDF"):
        return KERAS_H5 if keras_h5(path) else None
    head = head if head is not None else head_of(path, 512)
    return of_head(head) if head is not None else None


def of_folder(folder: Path) -> Foreign | None:
    """What the folder is, by the marker files another framework saves in it (`_FOLDER_MARKERS`), or None."""
    return next((kind for marker, kind in _FOLDER_MARKERS if (folder / marker).is_file()), None)


def said(kind: Foreign, detail: str = "") -> str:
    """What a file or folder of `kind` is, in words; `detail` follows its `what` (the arrays an .npz holds)."""
    return f"{kind.what}{detail}" + (", not PyTorch weights" if kind.framework else "")


def note(name: str, kind: Foreign, detail: str = "") -> str:
    """The note of a file or folder skipped as `kind` (read back by `in_note`)."""
    return f"skipped {name}: {said(kind, detail)}"


def in_note(text: str) -> tuple[str, Foreign] | None:
    """(name, kind) of a note `note` wrote, else None."""
    for kind in KINDS:
        at = text.find(": " + kind.what)
        if text.startswith("skipped ") and at > len("skipped "):
            return text[len("skipped "):at], kind
    return None
