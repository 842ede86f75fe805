"""Storage is a URI: a local path, `file://`, `s3://` or `gs://`, all through pyarrow's filesystem layer.

Every artifact, Tune's experiment state, Ray Train's checkpoints and `results.parquet` live under one storage
root, so a node that did not make a file can still read it. Nothing here renames: object stores have no atomic
rename, so a file is one whole write (an object PUT; on local disks a temporary name renamed into place), and an
artifact is complete only once its manifest exists (`synthray.core.artifacts`).

Credentials come from the environment, as the cloud SDKs read them:
- S3: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`, web identity, or an instance role;
  `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` points at an S3-compatible store (MinIO, moto, R2).
- GCS: `GOOGLE_APPLICATION_CREDENTIALS`, or the node's service account.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from synthray.core.registry import SynthrayError

SCHEMES = ("file", "s3", "gs")


def normalize(uri: str | Path) -> str:
    """A canonical root: `s3://b/p` and `gs://b/p` without a trailing slash; local paths absolute, without `file://`.

    An unknown scheme is a one-line error, never a local folder named after it.
    """
    text = str(uri).strip()
    if "://" in text:
        scheme, rest = text.split("://", 1)
        scheme = scheme.lower()
        if scheme not in SCHEMES:
            raise SynthrayError(f"storage '{text}': unknown URI scheme '{scheme}://'; use a local path, file://, s3:// or gs://")
        if scheme == "file":
            return str(Path(rest or "/").expanduser().resolve())
        bucket = rest.split("/", 1)[0]
        if len(bucket) < 3:
            raise SynthrayError(f"storage '{text}': bucket name '{bucket}' is too short (3 characters at least)")
        return f"{scheme}://{rest.rstrip('/')}"
    if text.startswith(("s3:/", "gs:/")):  # the old bug: s3:/bucket is what Path() makes of s3://bucket
        raise SynthrayError(f"storage '{text}': write the URI with two slashes, e.g. s3://bucket/prefix")
    return str(Path(text).expanduser().resolve())


def is_local(uri: str) -> bool:
    return "://" not in uri


def join(uri: str, *parts: str) -> str:
    out = uri.rstrip("/")
    for part in parts:
        out += "/" + str(part).strip("/")
    return out


def name(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def parent(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[0]


def relative(uri: str, root: str) -> str:
    """`uri` relative to `root` (both under the same root)."""
    root = root.rstrip("/") + "/"
    if not uri.startswith(root):
        raise ValueError(f"{uri} is not under {root}")
    return uri[len(root):]


def _s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def _s3(bucket: str) -> Any:
    import pyarrow.fs as pafs

    endpoint = _s3_endpoint()
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region:
        # Real AWS serves each bucket from its own region; an S3-compatible endpoint does not care.
        region = "us-east-1" if endpoint else _bucket_region(bucket)
    # background_writes=False: the retrying wrapper writes from inside pyarrow's IO threads (copy_files, which Ray
    # Train and Tune use); an upload that queued its parts on that same pool and waited for them would deadlock.
    return pafs.S3FileSystem(endpoint_override=endpoint, region=region, connect_timeout=5, request_timeout=60,
                             retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=3), background_writes=False)


def _bucket_region(bucket: str) -> str:
    import pyarrow.fs as pafs

    try:
        return pafs.resolve_s3_region(bucket)
    except OSError:
        return "us-east-1"  # the bucket check that follows names the real problem


def _filesystem(scheme: str, bucket: str, retry: bool = True) -> Any:
    """The filesystem of a scheme; a remote one retries transient errors with backoff (`synthray.core.retry`) unless
    `retry=False` (the up-front storage check, which must answer at once)."""
    return _cached_filesystem(scheme, bucket, retry, _s3_endpoint() if scheme == "s3" else None)


@functools.lru_cache(maxsize=16)
def _cached_filesystem(scheme: str, bucket: str, retry: bool, endpoint: str | None) -> Any:
    # `endpoint` is in the cache key so that a process whose AWS_ENDPOINT_URL changes never reuses a client that
    # points at the old server.
    import pyarrow.fs as pafs

    from synthray.core.retry import retrying

    if scheme == "file":
        return pafs.LocalFileSystem()
    fs = _s3(bucket) if scheme == "s3" else pafs.GcsFileSystem()
    return retrying(fs) if retry else fs


def resolve(uri: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path inside it) for a normalized URI. Filesystems pickle, so Ray workers can take them."""
    if is_local(uri):
        return _filesystem("file", ""), uri
    scheme, rest = uri.split("://", 1)
    return _filesystem(scheme, rest.split("/", 1)[0]), rest


def filesystem(uri: str) -> Any:
    return resolve(uri)[0]


def exists(uri: str) -> bool:
    import pyarrow.fs as pafs

    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {uri}") from None


def read_text(uri: str) -> str:
    return read_bytes(uri).decode()


def write_bytes(uri: str, data: bytes) -> dict[str, Any]:
    """Write one whole file; returns its manifest entry {size, sha256}.

    An object PUT is all-or-nothing. A local file is written under a temporary name and renamed, so a reader of
    a local store never sees half a file either.
    """
    fs, path = resolve(uri)
    if is_local(uri):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(path).with_name(f".{Path(path).name}.tmp-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    else:
        with fs.open_output_stream(path) as f:
            f.write(data)
    return entry(data)


def entry(data: bytes) -> dict[str, Any]:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def list_files(uri: str) -> dict[str, int]:
    """Every file below the folder `uri`, as {relative path: size}, skipping hidden temporaries ('.name')."""
    import pyarrow.fs as pafs

    fs, path = resolve(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    except FileNotFoundError:
        return {}
    out = {}
    for info in infos:
        if info.type == pafs.FileType.File:
            rel = info.path[len(path.rstrip("/")) + 1:]
            if not any(part.startswith(".") for part in rel.split("/")):
                out[rel] = int(info.size)
    return dict(sorted(out.items()))


def list_dirs(uri: str) -> list[str]:
    """Names of the folders directly below `uri` (on object stores: the common prefixes)."""
    import pyarrow.fs as pafs

    fs, path = resolve(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
    except FileNotFoundError:
        return []
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)


def delete(uri: str) -> None:
    """Remove a folder and everything below it (missing is fine)."""
    fs, path = resolve(uri)
    if exists(uri):
        fs.delete_dir(path)


def delete_file(uri: str) -> None:
    """Remove one file (missing is fine)."""
    fs, path = resolve(uri)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass


def upload_dir(local: Path, uri: str) -> dict[str, dict[str, Any]]:
    """Copy every file under `local` to the folder `uri`; returns {relative path: manifest entry}."""
    out = {}
    for file in sorted(p for p in Path(local).rglob("*") if p.is_file()):
        rel = file.relative_to(local).as_posix()
        out[rel] = write_bytes(join(uri, rel), file.read_bytes())
    return out


def download_dir(uri: str, local: Path, files: Iterable[str] | None = None, read: Callable[[str], bytes] = read_bytes) -> Path:
    """Copy the files of folder `uri` (or just `files`, relative paths) into `local` with `read`; returns `local`."""
    local = Path(local)
    for rel in files if files is not None else list_files(uri):
        target = local / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(read(join(uri, rel)))
    return local


def local_copy(uri: str, scratch: str | Path, read: Callable[[str], bytes] = read_bytes) -> Path:
    """A local folder with the content of folder `uri`: the folder itself on local storage, else a copy in this
    node's scratch cache (made once per content; `uri` must be an immutable artifact or staged snapshot)."""
    if is_local(uri):
        return Path(uri)
    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    target = Path(scratch) / "downloads" / f"{name(uri)}-{digest}"
    done = target / ".complete"
    if done.exists():
        return target
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=ensure_dir(Path(scratch) / "downloads")))
    try:
        with scratch_space(Path(scratch)):
            download_dir(uri, staging, read=read)
            (staging / ".complete").touch()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # never leave half a copy behind
        raise
    try:
        os.replace(staging, target)
    except OSError:  # another process on this node finished the same copy first
        shutil.rmtree(staging, ignore_errors=True)
    return target


@contextlib.contextmanager
def scratch_space(scratch: Path):
    """Turn 'no space left on device' while writing under `scratch` into one line that names the folder."""
    try:
        yield
    except Exception as err:
        free = shutil.disk_usage(scratch).free if Path(scratch).exists() else 0
        # Not every writer says ENOSPC: torch.save, for one, fails with a RuntimeError about a file position.
        if not (isinstance(err, OSError) and err.errno == errno.ENOSPC) and free >= 2**20:
            raise
        filename = getattr(err, "filename", None)
        writing = f", writing {Path(filename).name}" if filename else ""
        raise SynthrayError(f"scratch folder {scratch} is full ({free / 2**20:.0f} MiB free{writing}); free space there, "
                            "or point scratch= (or SYNTHRAY_SCRATCH) at a larger disk") from None


def ensure_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def scratch_dir(setting: str | None) -> Path:
    """This node's scratch folder: `$SYNTHRAY_SCRATCH` (set per node by the cluster) wins over the config's `scratch`.

    Scratch holds caches and downloads only; nothing another node must read is written only there.
    """
    path = os.environ.get("SYNTHRAY_SCRATCH") or setting or os.path.join(tempfile.gettempdir(), "synthray-scratch")
    return ensure_dir(Path(path).expanduser())


_CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
                         "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI")


def _s3_credentials_configured() -> bool:
    """Whether any of the AWS SDK's credential sources could answer (an instance role counts unless disabled)."""
    if any(os.environ.get(v) for v in _CREDENTIAL_VARIABLES):
        return True
    home = Path(os.environ.get("HOME", "~")).expanduser() / ".aws"
    if (home / "credentials").is_file() or (home / "config").is_file():
        return True
    return os.environ.get("AWS_EC2_METADATA_DISABLED", "").lower() != "true"


def check_storage(uri: str) -> str:
    """Normalize `uri` and prove it usable before anything launches: a one-line SynthrayError for an unknown scheme,
    missing credentials, an unreachable endpoint or a bucket that does not exist. Writes nothing."""
    import pyarrow.fs as pafs

    root = normalize(uri)
    if is_local(root):
        return root
    scheme, rest = root.split("://", 1)
    bucket = rest.split("/", 1)[0]
    if scheme == "s3" and not _s3_credentials_configured():
        raise SynthrayError(f"storage {root}: no S3 credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                            "(or AWS_PROFILE), or run on a node with an instance role")
    where = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "the AWS endpoint"
    where = where if scheme == "s3" else "Google Cloud Storage"
    try:
        info = _filesystem(scheme, bucket, retry=False).get_file_info(bucket)
    except OSError as err:
        text = str(err)
        if credentials_refused(text):
            raise SynthrayError(f"storage {root}: the credentials were refused for bucket '{bucket}' "
                                f"({_first_line(text)})") from None
        raise SynthrayError(f"storage {root}: cannot reach {where} ({_first_line(text)})") from None
    if info.type == pafs.FileType.NotFound:
        raise SynthrayError(f"storage {root}: bucket '{bucket}' does not exist at {where}; create it first")
    return root


def credentials_refused(error_text: str) -> bool:
    """Whether an object store's error says it refused the credentials (rather than could not be reached)."""
    # A connection failure wins, and "403" counts only as a whole word: the text carries the endpoint's port, and a
    # random port such as 40317 once read as a refusal.
    if re.search(r"connect|NETWORK_CONNECTION|resolve host|timed out", error_text, re.IGNORECASE):
        return False
    return bool(re.search(r"ACCESS_DENIED|AccessDenied|\b403\b|INVALID_ACCESS_KEY|SIGNATURE|credentials", error_text))


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "no detail"
    return line if len(line) < 240 else line[:237] + "..."
