"""S3 access for the fleet: create-only puts, compare-and-swap puts, conditional GETs,
streaming multipart uploads with SHA-256 checksums, streaming downloads.

Invariants:
- Immutable objects are written with `If-None-Match: *` (create-only); a second writer
  gets Conflict, never an overwrite. Multipart uploads complete create-only too.
- Mutable objects (channel pointers) change only with `If-Match: ETAG` of the version
  the writer read; 412 and 409 both mean "someone else wrote first" (Conflict).
- Nothing here interprets content: callers verify signatures and hashes.
- Credentials come only from boto3's standard chain (environment, profile, instance role).
- Checksums: "when_required" so servers that reject boto3's default CRC headers work
  (SeaweedFS); uploads carry an explicit SHA-256 per part instead.

boto3 is imported lazily: only fleet commands load it. One boto3 Session per process
(as boto3.client() keeps): each Bucket's client is made from it, under a lock.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import urlparse

from .errors import BucketError, Conflict, NotFound, UsageError

_session_lock = threading.Lock()
_session: Any = None  # the process's boto3 Session (created on first use)

PART_SIZE = 8 << 20  # S3 minimum is 5 MiB except for the last part; bounds upload memory
READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class Location:
    bucket: str
    prefix: str  # "" or ends with "/"

    @classmethod
    def parse(cls, url: str) -> Location:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise UsageError(f"fleet url {url!r}: expected s3://BUCKET/PREFIX")
        prefix = parsed.path.strip("/")
        return cls(parsed.netloc, prefix + "/" if prefix else "")


@dataclass(frozen=True)
class Object:
    body: bytes
    etag: str


@dataclass(frozen=True)
class Listed:
    """One key of a LIST page: name (relative to the bucket prefix) and the ETag the
    server lists for it ("" when it lists none)."""
    name: str
    etag: str


def _sha256_b64(data: bytes | memoryview) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


class Bucket:
    """One bucket/prefix on one endpoint. Keys passed in are relative to the prefix."""

    def __init__(self, url: str, *, endpoint_url: str | None = None,
                 region: str | None = None, connect_timeout: float = 5,
                 read_timeout: float = 30, client: Any = None) -> None:
        self.location = Location.parse(url)
        self.endpoint_url = endpoint_url
        self._client = client or self._make_client(endpoint_url, region, connect_timeout,
                                                   read_timeout)

    @staticmethod
    def _make_client(endpoint_url: str | None, region: str | None, connect_timeout: float,
                     read_timeout: float) -> Any:
        import boto3
        from botocore.config import Config as BotoConfig

        config = BotoConfig(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            connect_timeout=connect_timeout, read_timeout=read_timeout,
            # a retried conditional write could report 412 for its own first attempt;
            # callers re-read and compare instead, so the SDK must not retry blindly
            retries={"max_attempts": 2, "mode": "standard"},
            s3={"addressing_style": "path"},
        )
        global _session
        # one Session per process, as boto3.client() does: a new one would read and parse
        # the S3 model and endpoints.json (1.2 MB) again, ~0.1 s CPU per Bucket. Sessions
        # are not thread-safe, clients are: the lock covers client creation only
        with _session_lock:
            if _session is None:
                _session = boto3.session.Session()
            return _session.client("s3", endpoint_url=endpoint_url, region_name=region,
                                   config=config)

    def on_request(self, count: Callable[[str], None]) -> None:
        """Call count(operation) before every HTTP request this client sends, retries and
        each LIST page included ("ListObjectsV2", "GetObject", "PutObject"...)."""
        def before_send(event_name: str = "", **_: Any) -> None:
            count(event_name.rsplit(".", 1)[-1])

        self._client.meta.events.register("before-send.s3", before_send)

    # -- naming ------------------------------------------------------------

    def key(self, name: str) -> str:
        return self.location.prefix + name

    def url(self, name: str) -> str:
        return f"s3://{self.location.bucket}/{self.key(name)}"

    # -- errors ------------------------------------------------------------

    def _translate(self, exc: Exception, name: str, action: str) -> Exception:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (412, 409):
                return Conflict(f"{self.url(name)}: changed by another writer ({code or status})")
            if code in ("NoSuchKey", "NotFound", "404") or status == 404:
                return NotFound(f"{self.url(name)}: not found")
            if code == "NoSuchBucket":
                return BucketError(f"bucket {self.location.bucket!r} does not exist at "
                                   f"{self.endpoint_url or 'AWS'}; create it or fix [fleet] url")
            return BucketError(f"{action} {self.url(name)}: {code or status}: "
                               f"{exc.response.get('Error', {}).get('Message', exc)}")
        if isinstance(exc, NoCredentialsError):  # not the endpoint's fault: say what is
            return BucketError(f"{action} {self.url(name)}: no S3 credentials; set "
                               "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, ~/.aws/credentials "
                               "or an instance role (never in the config)")
        if isinstance(exc, BotoCoreError):
            return BucketError(f"{action} {self.url(name)}: {exc}; check [fleet] endpoint_url "
                               "and that the bucket is reachable")
        return exc

    def _call(self, name: str, action: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return fn(Bucket=self.location.bucket, Key=self.key(name), **kwargs)
        except Exception as exc:
            translated = self._translate(exc, name, action)
            if translated is exc:
                raise
            raise translated from exc

    # -- small objects -------------------------------------------------------

    def put_create(self, name: str, body: bytes, *, content_type: str = "application/json"
                   ) -> str:
        """Create-only put; Conflict if the key exists. Returns the new ETag."""
        resp = self._call(name, "put", self._client.put_object, Body=body, IfNoneMatch="*",
                          ContentType=content_type, ChecksumSHA256=_sha256_b64(body))
        return str(resp.get("ETag", ""))

    def put_if_match(self, name: str, body: bytes, etag: str | None, *,
                     content_type: str = "application/json") -> str:
        """Compare-and-swap: replace only the version with ETag `etag` (None: create-only)."""
        if etag is None:
            return self.put_create(name, body, content_type=content_type)
        resp = self._call(name, "put", self._client.put_object, Body=body, IfMatch=etag,
                          ContentType=content_type, ChecksumSHA256=_sha256_b64(body))
        return str(resp.get("ETag", ""))

    def put(self, name: str, body: bytes, *, content_type: str = "application/json") -> str:
        """Unconditional put, for objects one writer owns (an agent's status object)."""
        resp = self._call(name, "put", self._client.put_object, Body=body,
                          ContentType=content_type, ChecksumSHA256=_sha256_b64(body))
        return str(resp.get("ETag", ""))

    def get(self, name: str, *, max_bytes: int = 16 << 20) -> Object:
        """The whole (small) object; NotFound if missing. Refuses objects over max_bytes."""
        resp = self._call(name, "get", self._client.get_object)
        if int(resp.get("ContentLength") or 0) > max_bytes:
            resp["Body"].close()
            raise BucketError(f"{self.url(name)}: {resp['ContentLength']} bytes, more than "
                              f"the {max_bytes} expected for metadata")
        body = resp["Body"].read(max_bytes + 1)
        if len(body) > max_bytes:
            raise BucketError(f"{self.url(name)}: more than {max_bytes} bytes")
        return Object(body, str(resp.get("ETag", "")))

    def get_if_changed(self, name: str, etag: str | None) -> Object | None:
        """Conditional GET: None when the object still has ETag `etag` (304)."""
        if etag is None:
            return self.get(name)
        try:
            body, new_etag = self._get_conditional(name, etag)
        except _NotModified:
            return None
        except Conflict:
            # SeaweedFS answers a conditional GET on a missing key with 412, not 404
            return self.get(name)
        return Object(body, new_etag)

    def _get_conditional(self, name: str, etag: str) -> tuple[bytes, str]:
        from botocore.exceptions import ClientError

        try:
            resp = self._client.get_object(Bucket=self.location.bucket, Key=self.key(name),
                                           IfNoneMatch=etag)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if status == 304 or code in ("304", "NotModified"):
                raise _NotModified from None
            raise self._translate(exc, name, "get") from exc
        except Exception as exc:
            raise self._translate(exc, name, "get") from exc
        return resp["Body"].read(16 << 20), str(resp.get("ETag", ""))

    def delete(self, name: str) -> None:
        """Remove an object (doctor's scratch keys; missing is fine)."""
        try:
            self._call(name, "delete", self._client.delete_object)
        except NotFound:
            pass

    def exists(self, name: str) -> bool:
        try:
            self._call(name, "head", self._client.head_object)
        except NotFound:
            return False
        return True

    def list(self, prefix: str) -> Iterator[str]:
        """Names (relative to the bucket prefix) under prefix."""
        return (item.name for item in self.listing(prefix))

    def listing(self, prefix: str) -> Iterator[Listed]:
        """Names under prefix with their ETags (one LIST request per 1,000 keys)."""
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.location.bucket,
                                           Prefix=self.key(prefix)):
                for item in page.get("Contents", []):
                    yield Listed(item["Key"][len(self.location.prefix):],
                                 str(item.get("ETag") or ""))
        except Exception as exc:
            translated = self._translate(exc, prefix, "list")
            if translated is exc:
                raise
            raise translated from exc

    # -- large objects -----------------------------------------------------

    def upload_stream(self, name: str, chunks: Iterable[bytes], *,
                      content_type: str = "application/octet-stream") -> int:
        """Create-only streaming upload of `chunks`; memory bounded by PART_SIZE.

        One part: a plain create-only put. More: a multipart upload with a SHA-256
        checksum per part, completed create-only; aborted on any error.
        Returns the bytes uploaded. Conflict if the key exists.
        """
        parts = _parts(chunks, PART_SIZE)
        first = next(parts, b"")
        second = next(parts, None)
        if second is None:
            self.put_create(name, first, content_type=content_type)
            return len(first)
        upload = self._call(name, "upload", self._client.create_multipart_upload,
                            ContentType=content_type, ChecksumAlgorithm="SHA256")
        upload_id = upload["UploadId"]
        done: list[dict[str, Any]] = []
        total = 0
        try:
            for number, part in enumerate(_chain(first, second, parts), start=1):
                checksum = _sha256_b64(part)
                resp = self._call(name, "upload part", self._client.upload_part,
                                  UploadId=upload_id, PartNumber=number, Body=part,
                                  ChecksumSHA256=checksum)
                done.append({"PartNumber": number, "ETag": resp["ETag"],
                             "ChecksumSHA256": checksum})
                total += len(part)
            self._call(name, "complete upload", self._client.complete_multipart_upload,
                       UploadId=upload_id, MultipartUpload={"Parts": done}, IfNoneMatch="*")
        except BaseException:
            try:
                self._client.abort_multipart_upload(Bucket=self.location.bucket,
                                                    Key=self.key(name), UploadId=upload_id)
            except Exception:  # noqa: BLE001 - the original error matters more
                pass
            raise
        return total

    def download(self, name: str, out: IO[bytes], *, max_bytes: int,
                 on_chunk: Callable[[bytes], None] | None = None) -> int:
        """Stream the object into `out`; refuses more than max_bytes. Returns bytes read."""
        resp = self._call(name, "get", self._client.get_object)
        body = resp["Body"]
        total = 0
        try:
            while True:
                chunk = body.read(READ_CHUNK)
                if not chunk:
                    break
                total += len(chunk)
                if total > max_bytes:
                    raise BucketError(f"{self.url(name)}: larger than the {max_bytes} bytes "
                                      "the manifest announced")
                out.write(chunk)
                if on_chunk is not None:
                    on_chunk(chunk)
        except Exception as exc:
            translated = self._translate(exc, name, "download")
            if translated is exc:
                raise
            raise translated from exc
        finally:
            body.close()
        return total


class _NotModified(Exception):
    pass


def _parts(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    buf = bytearray()
    for chunk in chunks:
        buf += chunk
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]
    if buf:
        yield bytes(buf)


def _chain(first: bytes, second: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield second
    yield from rest
