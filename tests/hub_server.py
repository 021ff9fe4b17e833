"""A small, in-memory, Hub-compatible HTTP server for offline tests.

The real ``huggingface_hub`` client (and, through it, timm and transformers) talks real HTTP to
this server on ``127.0.0.1`` (port 0: a free port chosen by the OS). Point the client at it with
``HF_ENDPOINT`` *before* ``huggingface_hub`` is imported, or patch the already imported module
with :func:`point_huggingface_hub_at` (``tests/conftest.py`` does the latter).

Example:
    >>> hub = FakeHub(tokens={"hf_writer": "alice"}).start()
    >>> hub.url.startswith("http://127.0.0.1:")
    True
    >>> hub.stop()

What it implements (exactly what the project's tests exercise, checked against the sources of
huggingface_hub 2.4, timm 1.0 and transformers 5):

* ``POST /api/repos/create`` (409 when the repo exists, so ``exist_ok=True`` works) and
  ``POST /api/repos/delete``; ``GET /api/whoami-v2``.
* ``GET /api/{models,datasets}/{repo_id}`` and ``.../revision/{rev}`` (``repo_info`` /
  ``model_info``: ``sha``, ``private``, ``siblings``, ``cardData``, ``tags``,
  ``pipeline_tag``, ``library_name`` parsed from the README's YAML header).
* ``GET .../tree/{rev}[/{path}]`` with ``recursive`` (``list_repo_tree``, used by
  ``snapshot_download``); everything is returned in one page.
* ``POST .../preupload/{rev}``: every file is answered ``uploadMode: "regular"`` with the oid of
  the current blob, so the client sends contents base64-encoded inside the commit and skips
  unchanged files. ``POST .../commit/{rev}`` parses the NDJSON payload: ``header`` (with
  ``parentCommit``: 412 when it is not the head), ``file`` (base64), ``deletedFile``,
  ``deletedFolder``.
* ``HEAD``/``GET /{repo_id}/resolve/{rev}/{path}`` (and ``/datasets/...``) with the headers the
  client reads: ``X-Repo-Commit``, ``ETag`` (the git blob sha1), ``Content-Length``; ``Range``
  requests on ``GET``; a missing file is a 404 with ``X-Error-Code: EntryNotFound``.
* ``POST /api/validate-yaml``: checks that the card's front matter is a YAML mapping and that a
  few common fields (``license``, ``library_name``, ``pipeline_tag``, ``tags``, ``datasets``,
  ``model-index``) have the right types; 400 with a text message otherwise.
* Authentication: ``Authorization: Bearer <token>`` is checked on every request. An unknown token
  is a 401 ``Invalid credentials in Authorization header`` (what the Hub says); writes need a
  token whose user owns the namespace (401 without a token, 403 for another namespace); private
  repos are invisible (401 ``RepoNotFound``) to others.
* Programmable failures: :meth:`FakeHub.fail_next` makes the next N matching requests return a
  status (500 by default); :meth:`FakeHub.drop_next` makes the next N matching requests lose
  their connection mid-upload (the server reads part of the body, then closes the socket
  without an answer, and applies nothing); :attr:`FakeHub.requests` records method, path, status and whether an
  Authorization header was sent (never the token itself).

What it does NOT implement (a test relying on these fails loudly with 400/404/501):
LFS and Xet uploads or downloads (no ``lfsFile`` commit lines, no ``X-Xet-Hash``), pull requests
and ``create_pr``, branches and tags other than ``main`` (a full 40-hex commit id is accepted as a
revision), redirects and CDN URLs, pagination (``Link`` headers), ``.gitignore`` handling,
``expand``/``blobs``/security metadata, gated repos, organisations (a user may only write to
their own namespace, or to namespaces listed in ``FakeHub(orgs=...)``), repo settings, discussions,
Spaces, buckets, rate limits, and persistence (everything lives in memory and dies with the
server). ``validate-yaml`` is far laxer than the real Hub.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

__all__ = ["FakeHub", "Failure", "RequestRecord", "point_huggingface_hub_at"]

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
_REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


def git_blob_oid(content: bytes) -> str:
    """The git sha1 of a blob (what the Hub sends as ``ETag`` of a regular file)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@dataclass
class Commit:
    """One commit: the full file tree (path -> bytes) after it."""

    oid: str
    parent: str | None
    title: str
    description: str
    files: dict[str, bytes]
    date: str = field(default_factory=_now)


@dataclass
class Repo:
    """One repository with its linear history on ``main``."""

    repo_id: str
    repo_type: str
    private: bool
    commits: list[Commit]
    created_at: str = field(default_factory=_now)

    @property
    def head(self) -> Commit:
        return self.commits[-1]

    def resolve(self, revision: str) -> Commit | None:
        """The commit for ``main`` or a full commit id, else ``None``."""
        if revision == "main":
            return self.head
        if _COMMIT_RE.match(revision):
            return next((c for c in self.commits if c.oid == revision), None)
        return None


@dataclass
class Failure:
    """A programmed failure: the next ``remaining`` matching requests answer ``status``."""

    remaining: int
    status: int = 500
    path_contains: str | None = None
    method: str | None = None

    def matches(self, method: str, path: str) -> bool:
        return (
            self.remaining > 0
            and (self.method is None or self.method == method)
            and (self.path_contains is None or self.path_contains in path)
        )


@dataclass
class RequestRecord:
    """What the server saw of one request (the token is never recorded)."""

    method: str
    path: str
    query: str
    status: int
    authorized: bool


class _Reply(Exception):
    """Raised inside a handler to answer with an error status."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class FakeHub:
    """The server and its in-memory state.

    Args:
        tokens: valid tokens mapped to user names, e.g. ``{"hf_abc": "alice"}``.
        orgs: extra namespaces a user may write to, e.g. ``{"alice": ["my-org"]}``.
    """

    def __init__(
        self,
        tokens: dict[str, str] | None = None,
        orgs: dict[str, list[str]] | None = None,
    ) -> None:
        self.tokens: dict[str, str] = dict(tokens or {})
        self.orgs: dict[str, list[str]] = {k: list(v) for k, v in (orgs or {}).items()}
        self.repos: dict[tuple[str, str], Repo] = {}
        self.failures: list[Failure] = []
        self.drops: list[Failure] = []  # drop_next: connections cut mid-request
        self.requests: list[RequestRecord] = []
        self.lock = threading.RLock()
        self._counter = itertools.count()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> FakeHub:
        """Start serving on ``127.0.0.1`` on a free port in a daemon thread."""
        hub = self

        class Handler(_Handler):
            server_hub = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fake-hub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the server and close its socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeHub:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The endpoint, e.g. ``http://127.0.0.1:54321`` (use it as ``HF_ENDPOINT``)."""
        assert self._server is not None, "FakeHub is not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- test controls ------------------------------------------------------------------------
    def fail_next(
        self,
        n: int = 1,
        status: int = 500,
        *,
        path_contains: str | None = None,
        method: str | None = None,
    ) -> Failure:
        """Make the next ``n`` requests (optionally only those matching) answer ``status``."""
        failure = Failure(n, status, path_contains, method)
        with self.lock:
            self.failures.append(failure)
        return failure

    def drop_next(
        self, n: int = 1, *, path_contains: str | None = None, method: str | None = None
    ) -> Failure:
        """Cut the connection of the next ``n`` matching requests mid-upload: half the body is
        read, then the socket is closed with no answer (recorded with status 0)."""
        drop = Failure(n, 0, path_contains, method)
        with self.lock:
            self.drops.append(drop)
        return drop

    def reset(self) -> None:
        """Forget repos, programmed failures and the request log."""
        with self.lock:
            self.repos.clear()
            self.failures.clear()
            self.drops.clear()
            self.requests.clear()

    def files(
        self, repo_id: str, revision: str = "main", repo_type: str = "model"
    ) -> dict[str, bytes]:
        """The file tree of a repo at a revision (a copy)."""
        with self.lock:
            commit = self.repos[(repo_type, repo_id)].resolve(revision)
            assert commit is not None, f"unknown revision {revision}"
            return dict(commit.files)

    def commits(self, repo_id: str, repo_type: str = "model") -> list[Commit]:
        """The history of a repo, oldest first."""
        with self.lock:
            return list(self.repos[(repo_type, repo_id)].commits)

    # -- state helpers (called with the lock held) --------------------------------------------
    def _new_commit(
        self, parent: Commit | None, title: str, description: str, files: dict[str, bytes]
    ) -> Commit:
        h = hashlib.sha1()
        h.update((parent.oid if parent else "").encode())
        h.update(f"{title}\n{description}\n{next(self._counter)}".encode())
        for path in sorted(files):
            h.update(f"{path}\0{git_blob_oid(files[path])}\n".encode())
        return Commit(h.hexdigest(), parent.oid if parent else None, title, description, files)

    def _may_write(self, user: str | None, namespace: str) -> None:
        if user is None:
            raise _Reply(401, "Invalid username or password.")
        if namespace != user and namespace not in self.orgs.get(user, []):
            raise _Reply(
                403,
                f"You don't have the rights to write to the '{namespace}' namespace",
                {"X-Error-Message": f"You don't have the rights to write to '{namespace}'"},
            )

    def _get_repo(self, repo_type: str, repo_id: str, user: str | None) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and (user is None or not self._owns(user, repo_id))):
            raise _Reply(
                401 if user is None else 404,
                "Repository not found",
                {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"},
            )
        return repo

    def _owns(self, user: str, repo_id: str) -> bool:
        namespace = repo_id.split("/", 1)[0]
        return namespace == user or namespace in self.orgs.get(user, [])


def _card_metadata(files: dict[str, bytes]) -> dict[str, Any] | None:
    """The README's YAML front matter as a dict, or ``None``."""
    text = files.get("README.md", b"").decode("utf-8", errors="replace")
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if not match:
        return None
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


def _validate_card_yaml(content: str) -> str | None:
    """An error message for a card's front matter, or ``None`` when acceptable."""
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, re.S)
    if not match:
        return None  # a card without metadata is valid
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError as err:
        return f"Invalid YAML in card metadata: {err}"
    if data is None:
        return None
    if not isinstance(data, dict):
        return "Card metadata must be a YAML mapping"
    for key in ("license", "library_name", "pipeline_tag"):
        if key in data and not isinstance(data[key], str):
            return f'"{key}" must be a string'
    for key in ("tags", "datasets"):
        value = data.get(key)
        if value is not None and not (
            isinstance(value, str)
            or (isinstance(value, list) and all(isinstance(v, str) for v in value))
        ):
            return f'"{key}" must be a string or a list of strings'
    index = data.get("model-index")
    if index is not None:
        if not isinstance(index, list) or not all(
            isinstance(m, dict)
            and isinstance(m.get("name"), str)
            and isinstance(m.get("results"), list)
            for m in index
        ):
            return '"model-index" must be a list of {name, results} mappings'
        for model in index:
            for result in model["results"]:
                if not (
                    isinstance(result, dict)
                    and isinstance(result.get("task"), dict)
                    and isinstance(result.get("dataset"), dict)
                    and isinstance(result.get("metrics"), list)
                ):
                    return '"model-index" results need task, dataset and metrics'
    return None


class _Handler(BaseHTTPRequestHandler):
    server_hub: FakeHub  # set by FakeHub.start
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects

    # -- plumbing -----------------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Silence the default stderr access log (the request log is :attr:`FakeHub.requests`)."""

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(
        self,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
        head: bool = False,
        content_length: int | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header(
            "Content-Length", str(len(body) if content_length is None else content_length)
        )
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if body and not head:
            self.wfile.write(body)
        self._status = status

    def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), headers)

    def _user(self) -> str | None:
        """The user of the request's token; raises 401 for an unknown token."""
        auth = self.headers.get("Authorization")
        if not auth:
            return None
        token = auth.split(" ", 1)[1].strip() if " " in auth else auth.strip()
        user = self.server_hub.tokens.get(token)
        if user is None:
            raise _Reply(
                401,
                "Invalid credentials in Authorization header",
                {"X-Error-Message": "Invalid credentials in Authorization header"},
            )
        return user

    def _dispatch(self, method: str) -> None:
        hub = self.server_hub
        self._status = 0
        split = urlsplit(self.path)
        path = unquote(split.path)
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        if self._drop(method, path, split.query):
            return
        body = self._read_body() if method in ("POST", "PUT", "DELETE") else b""
        try:
            with hub.lock:
                failure = next((f for f in hub.failures if f.matches(method, path)), None)
                if failure is not None:
                    failure.remaining -= 1
            if failure is not None:
                raise _Reply(failure.status, f"Injected failure ({failure.status}) by FakeHub")
            user = self._user()
            with hub.lock:
                self._route(method, path, query, body, user)
        except _Reply as reply:
            if method == "HEAD":
                self._send(reply.status, b"", reply.headers, head=True)
            else:
                self._json(reply.status, {"error": reply.message}, reply.headers)
        except Exception as err:  # a bug in the fake: answer 500 and say so
            self._json(500, {"error": f"FakeHub internal error: {err!r}"})
        finally:
            with hub.lock:
                hub.requests.append(
                    RequestRecord(
                        method, path, split.query, self._status, "Authorization" in self.headers
                    )
                )

    def _drop(self, method: str, path: str, query: str) -> bool:
        """Cut this request's connection mid-upload when :meth:`FakeHub.drop_next` says so."""
        import socket

        hub = self.server_hub
        with hub.lock:
            drop = next((d for d in hub.drops if d.matches(method, path)), None)
            if drop is None:
                return False
            drop.remaining -= 1
            hub.requests.append(
                RequestRecord(method, path, query, 0, "Authorization" in self.headers)
            )
        length = int(self.headers.get("Content-Length") or 0)
        if length:  # (a chunked body is cut before its first byte)
            self.rfile.read(max(1, length // 2))
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        return True

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._dispatch("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    # -- routes -------------------------------------------------------------------------------
    def _route(
        self, method: str, path: str, query: dict[str, str], body: bytes, user: str | None
    ) -> None:
        if method == "POST" and path == "/api/repos/create":
            return self._create_repo(json.loads(body or b"{}"), user)
        if method in ("POST", "DELETE") and path == "/api/repos/delete":
            return self._delete_repo(json.loads(body or b"{}"), user)
        if method == "GET" and path == "/api/whoami-v2":
            if user is None:
                raise _Reply(401, "Invalid username or password.")
            return self._json(200, {"type": "user", "name": user, "orgs": []})
        if method == "POST" and path == "/api/validate-yaml":
            error = _validate_card_yaml(json.loads(body or b"{}").get("content", ""))
            if error:
                return self._send(400, error.encode(), content_type="text/plain")
            return self._json(200, {})

        m = re.match(r"^/api/(models|datasets|spaces)/([^/]+/[^/]+)(?:/(.*))?$", path)
        if m:
            repo_type, repo_id, rest = _REPO_TYPES[m.group(1)], m.group(2), m.group(3) or ""
            repo = self._repo(repo_type, repo_id, user)
            if method == "GET" and (rest == "" or rest.startswith("revision/")):
                revision = rest[len("revision/") :] if rest else "main"
                return self._repo_info(repo, self._commit(repo, revision))
            if method == "GET" and rest.startswith("tree/"):
                revision, _, sub = rest[len("tree/") :].partition("/")
                return self._tree(self._commit(repo, revision), sub, query)
            if method == "POST" and rest.startswith("preupload/"):
                self.server_hub._may_write(user, repo_id.split("/")[0])
                return self._preupload(repo, rest[len("preupload/") :], body, query)
            if method == "POST" and rest.startswith("commit/"):
                self.server_hub._may_write(user, repo_id.split("/")[0])
                return self._commit_post(repo, rest[len("commit/") :], body, query)
            raise _Reply(501, f"FakeHub does not implement {method} {path}")

        m = re.match(r"^(?:/(datasets|spaces))?/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
        if m and method in ("GET", "HEAD"):
            repo_type = _REPO_TYPES[m.group(1)] if m.group(1) else "model"
            repo = self._repo(repo_type, m.group(2), user)
            return self._resolve(repo, m.group(3), m.group(4), method == "HEAD")
        raise _Reply(404, f"FakeHub does not implement {method} {path}")

    def _repo(self, repo_type: str, repo_id: str, user: str | None) -> Repo:
        return self.server_hub._get_repo(repo_type, repo_id, user)

    def _commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise _Reply(
                404,
                f"Invalid rev id: {revision}",
                {
                    "X-Error-Code": "RevisionNotFound",
                    "X-Error-Message": f"Invalid rev id: {revision}",
                },
            )
        return commit

    def _base(self) -> str:
        return self.server_hub.url

    def _create_repo(self, payload: dict[str, Any], user: str | None) -> None:
        hub = self.server_hub
        if user is None:
            raise _Reply(401, "Invalid username or password.")
        namespace = payload.get("organization") or user
        hub._may_write(user, namespace)
        repo_type = payload.get("type") or "model"
        if repo_type not in ("model", "dataset"):
            raise _Reply(501, f"FakeHub does not implement repo type {repo_type!r}")
        repo_id = f"{namespace}/{payload['name']}"
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self._base()}/{prefix}{repo_id}"
        if (repo_type, repo_id) in hub.repos:
            return self._json(409, {"error": "You already created this repo", "url": url})
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        first = hub._new_commit(None, "initial commit", "", {".gitattributes": GITATTRIBUTES})
        hub.repos[(repo_type, repo_id)] = Repo(repo_id, repo_type, private, [first])
        self._json(
            200, {"url": url, "name": repo_id, "id": hashlib.md5(repo_id.encode()).hexdigest()}
        )

    def _delete_repo(self, payload: dict[str, Any], user: str | None) -> None:
        hub = self.server_hub
        namespace = payload.get("organization") or user or ""
        hub._may_write(user, namespace)
        key = (payload.get("type") or "model", f"{namespace}/{payload['name']}")
        if key not in hub.repos:
            raise _Reply(404, "Repository not found", {"X-Error-Code": "RepoNotFound"})
        del hub.repos[key]
        self._json(200, {})

    def _repo_info(self, repo: Repo, commit: Commit) -> None:
        card = _card_metadata(commit.files)
        info: dict[str, Any] = {
            "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit.oid,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": repo.private,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": list((card or {}).get("tags") or []),
            "siblings": [{"rfilename": p} for p in sorted(commit.files)],
        }
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
            if card:
                info["cardData"] = card
                for key in ("pipeline_tag", "library_name"):
                    if isinstance(card.get(key), str):
                        info[key] = card[key]
        elif card:
            info["cardData"] = card
        self._json(200, info)

    def _tree(self, commit: Commit, sub: str, query: dict[str, str]) -> None:
        recursive = query.get("recursive", "false").lower() in ("1", "true")
        prefix = sub.strip("/") + "/" if sub.strip("/") else ""
        if prefix and not any(p.startswith(prefix) for p in commit.files):
            raise _Reply(404, f"{sub} does not exist", {"X-Error-Code": "EntryNotFound"})
        entries: list[dict[str, Any]] = []
        folders: set[str] = set()
        for path in sorted(commit.files):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix) :]
            parts = rest.split("/")
            for i in range(1, len(parts)):
                folder = prefix + "/".join(parts[:i])
                if (recursive or i == 1) and folder not in folders:
                    folders.add(folder)
                    oid = hashlib.sha1(folder.encode()).hexdigest()
                    entries.append({"type": "directory", "oid": oid, "size": 0, "path": folder})
            if recursive or len(parts) == 1:
                content = commit.files[path]
                entries.append(
                    {
                        "type": "file",
                        "oid": git_blob_oid(content),
                        "size": len(content),
                        "path": path,
                    }
                )
        self._json(200, entries)

    def _preupload(self, repo: Repo, revision: str, body: bytes, query: dict[str, str]) -> None:
        if query.get("create_pr"):
            raise _Reply(501, "FakeHub does not implement pull requests")
        commit = self._commit(repo, revision)
        files = json.loads(body or b"{}").get("files", [])
        answer = [
            {
                "path": f["path"],
                "uploadMode": "regular",
                "shouldIgnore": False,
                "oid": git_blob_oid(commit.files[f["path"]]) if f["path"] in commit.files else None,
            }
            for f in files
        ]
        self._json(200, {"files": answer, "commitOid": commit.oid})

    def _commit_post(self, repo: Repo, revision: str, body: bytes, query: dict[str, str]) -> None:
        hub = self.server_hub
        if query.get("create_pr"):
            raise _Reply(501, "FakeHub does not implement pull requests")
        if revision != "main":
            raise _Reply(501, f"FakeHub only commits to 'main', not {revision!r}")
        parent = repo.head
        files = dict(parent.files)
        title, description = "", ""
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item.get("key"), item.get("value", {})
            if key == "header":
                title, description = value.get("summary", ""), value.get("description", "")
                expected = value.get("parentCommit")
                if expected is not None and expected != parent.oid:
                    raise _Reply(412, "A commit has happened since. Please refresh and try again.")
            elif key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise _Reply(400, f"Unsupported encoding {value.get('encoding')!r}")
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                if value["path"] not in files:
                    raise _Reply(404, f"File {value['path']} does not exist")
                del files[value["path"]]
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                for path in [p for p in files if p.startswith(folder)]:
                    del files[path]
            elif key in ("lfsFile", "xetFile"):
                raise _Reply(400, "FakeHub does not implement LFS/Xet files")
            else:
                raise _Reply(400, f"Unknown commit operation {key!r}")
        new = hub._new_commit(parent, title, description, files)
        repo.commits.append(new)
        self._json(
            200,
            {
                "success": True,
                "commitOid": new.oid,
                "commitUrl": f"{self._base()}/{repo.repo_id}/commit/{new.oid}",
                "hookOutput": "",
                "pullRequestUrl": None,
            },
        )

    def _resolve(self, repo: Repo, revision: str, path: str, head: bool) -> None:
        commit = self._commit(repo, revision)
        base_headers = {"X-Repo-Commit": commit.oid}
        if path not in commit.files:
            raise _Reply(
                404,
                "Entry not found",
                {
                    **base_headers,
                    "X-Error-Code": "EntryNotFound",
                    "X-Error-Message": "Entry not found",
                },
            )
        content = commit.files[path]
        headers = {**base_headers, "ETag": f'"{git_blob_oid(content)}"', "Accept-Ranges": "bytes"}
        status, payload = 200, content
        rng = self.headers.get("Range")
        if rng and not head:
            m = re.match(r"bytes=(\d+)-(\d*)$", rng.strip())
            if not m:
                raise _Reply(416, f"Unsupported range {rng!r}")
            start = int(m.group(1))
            end = int(m.group(2)) if m.group(2) else len(content) - 1
            if start >= len(content):
                raise _Reply(
                    416, "Range not satisfiable", {"Content-Range": f"bytes */{len(content)}"}
                )
            payload = content[start : end + 1]
            status = 206
            headers["Content-Range"] = f"bytes {start}-{start + len(payload) - 1}/{len(content)}"
        self._send(
            status,
            payload,
            headers,
            content_type="application/octet-stream",
            head=head,
            content_length=len(payload),
        )


def point_huggingface_hub_at(endpoint: str) -> dict[str, Any]:
    """Point an already imported ``huggingface_hub`` at ``endpoint``; return the old values.

    ``HF_ENDPOINT`` is read once, when ``huggingface_hub`` is imported: ``constants.ENDPOINT``,
    ``constants.HUGGINGFACE_CO_URL_TEMPLATE`` and the module-level ``HfApi`` behind the
    functional API (``huggingface_hub.create_repo``, ``model_info``, ...) keep the old value.
    This sets all three (and ``os.environ["HF_ENDPOINT"]`` for subprocesses). Restore with
    :func:`restore_huggingface_hub`.
    """
    import os

    import huggingface_hub.constants as constants
    import huggingface_hub.hf_api as hf_api

    old = {
        "ENDPOINT": constants.ENDPOINT,
        "HUGGINGFACE_CO_URL_TEMPLATE": constants.HUGGINGFACE_CO_URL_TEMPLATE,
        "api.endpoint": hf_api.api.endpoint,
        "env": os.environ.get("HF_ENDPOINT"),
    }
    endpoint = endpoint.rstrip("/")
    constants.ENDPOINT = endpoint
    constants.HUGGINGFACE_CO_URL_TEMPLATE = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    hf_api.api.endpoint = endpoint
    os.environ["HF_ENDPOINT"] = endpoint
    return old


def restore_huggingface_hub(old: dict[str, Any]) -> None:
    """Undo :func:`point_huggingface_hub_at`."""
    import os

    import huggingface_hub.constants as constants
    import huggingface_hub.hf_api as hf_api

    constants.ENDPOINT = old["ENDPOINT"]
    constants.HUGGINGFACE_CO_URL_TEMPLATE = old["HUGGINGFACE_CO_URL_TEMPLATE"]
    hf_api.api.endpoint = old["api.endpoint"]
    if old["env"] is None:
        os.environ.pop("HF_ENDPOINT", None)
    else:
        os.environ["HF_ENDPOINT"] = old["env"]
