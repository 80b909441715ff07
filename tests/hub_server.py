"""A local server speaking the subset of the Hugging Face Hub HTTP API that publishing and loading use.

The real `huggingface_hub` client (and transformers / sentence-transformers on top of it) talks to this
server over real HTTP on 127.0.0.1, so the tests exercise the same requests, headers and payloads as a
push to huggingface.co, without network access. Only plain LFS transfers are spoken (the client must
run with ``HF_HUB_DISABLE_XET=1``); xet needs a CAS service that is out of scope here.

Routes (model repos; ``{repo}`` is ``namespace/name``, ``{rev}`` a branch or a 40-hex commit id):

    GET  /api/whoami-v2
    POST /api/repos/create                              JSON {name, organization, visibility|private, type}
    POST /api/validate-yaml                             JSON {content, repoType}
    GET  /api/models/{repo}[/revision/{rev}]            repo info (``?blobs=true`` adds sizes / LFS info)
    POST /api/models/{repo}/preupload/{rev}             JSON {files: [{path, sample, size}]} -> upload modes
    POST /api/models/{repo}/commit/{rev}                NDJSON header / file / lfsFile / deletedFile / deletedFolder
    POST /api/models/{repo}/branch/{branch}             JSON {startingPoint?}
    GET  /api/models/{repo}/refs
    GET  /api/models/{repo}/commits/{rev}
    GET  /api/models/{repo}/tree/{rev}[/{path}]         ``?recursive=``
    POST /api/models/{repo}/paths-info/{rev}            form {paths, expand}
    POST /{repo}.git/info/lfs/objects/batch             git-lfs batch API (basic transfer)
    PUT  /lfs-storage/{repo}/{oid}                      the upload URL handed out by the batch API
    POST /lfs-verify/{repo}/{oid}                       the verify URL handed out by the batch API
    HEAD/GET /{repo}/resolve/{rev}/{path}               file download, with ``Range`` support

Errors follow the Hub: a JSON body ``{"error": ...}``, ``X-Error-Message``, and for missing things a 404
(401 for private repos seen without the owner's token) with ``X-Error-Code`` set to ``RepoNotFound``,
``RevisionNotFound`` or ``EntryNotFound``. Resolve answers carry ``ETag`` / ``X-Repo-Commit`` and, for
LFS files, ``X-Linked-Etag`` / ``X-Linked-Size``.

Test hooks: :attr:`HubServer.calls` records every request (method, route template, path, status,
whether an ``Authorization`` header was sent); :meth:`HubServer.fail` makes the next N requests of a
route answer an error status without touching any state.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n"
# Extensions the Hub's default .gitattributes routes through LFS (subset relevant to model repos).
LFS_EXTENSIONS = (
    ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".h5", ".msgpack", ".model", ".npy", ".npz",
    ".pkl", ".gguf", ".tflite", ".ot", ".zip", ".gz", ".tar", ".arrow", ".parquet",
)
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
DEFAULT_GITATTRIBUTES = b"".join(
    f"*{ext} filter=lfs diff=lfs merge=lfs -text\n".encode() for ext in LFS_EXTENSIONS
)


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob with this content."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass
class FileEntry:
    """One file of a commit: regular files keep their bytes; LFS files point into the LFS store."""

    path: str
    size: int
    blob_id: str
    data: bytes | None = None  # regular files
    lfs_oid: str | None = None  # sha256 of the content for LFS files

    def to_json(self) -> dict:
        out: dict = {"type": "file", "path": self.path, "size": self.size, "oid": self.blob_id}
        if self.lfs_oid is not None:
            pointer = LFS_POINTER.format(oid=self.lfs_oid, size=self.size).encode()
            out["lfs"] = {"oid": self.lfs_oid, "size": self.size, "pointerSize": len(pointer)}
        return out

    @property
    def etag(self) -> str:
        # The Hub's etag is the git blob id for regular files and the sha256 for LFS files.
        return self.lfs_oid or self.blob_id


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    message: str
    files: dict[str, FileEntry]
    date: str = field(default_factory=_now)


@dataclass
class Repo:
    repo_id: str
    owner: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)
    lfs_oids: set[str] = field(default_factory=set)  # LFS objects uploaded to this repo (the Hub dedups per repo)
    created_at: str = field(default_factory=_now)


@dataclass
class Call:
    """A request the server answered: what tests use to check which API calls a push made."""

    method: str
    route: str
    path: str
    status: int
    authorized: bool

    def __str__(self) -> str:
        return f"{self.method} {self.route} -> {self.status}"


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None,
                 body: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.body = body or {}


_PLACEHOLDERS = {"repo": r"[^/]+/[^/]+", "rev": r"[^/]+", "path": r".+", "oid": r"[0-9a-f]{64}"}


def _route_regex(template: str) -> re.Pattern:
    """``/api/models/{repo}/commit/{rev}`` -> a regex with named groups, matched on the raw (quoted) path."""
    pattern = re.escape(template)
    for name, rx in _PLACEHOLDERS.items():
        pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>{rx})")
    return re.compile(pattern + "/?$")


class HubServer:
    """In-memory Hub: repos with branches and commits, an LFS object store, users and tokens.

    Args:
        tokens: bearer token -> user name. Every write needs a valid token whose user owns the namespace
            (or belongs to it through ``orgs``); private repos are only visible to their owner.
        orgs: organisation name -> member user names.
    """

    def __init__(self, tokens: dict[str, str] | None = None, orgs: dict[str, list[str]] | None = None):
        self.tokens = dict(tokens or {})
        self.orgs = {k: list(v) for k, v in (orgs or {}).items()}
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.calls: list[Call] = []
        self._faults: list[list] = []  # [route, status, remaining]
        self._lock = threading.RLock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._routes = [
            ("GET", "/api/whoami-v2", self._whoami),
            ("POST", "/api/repos/create", self._create_repo),
            ("POST", "/api/repos/delete", self._delete_repo),
            ("POST", "/api/validate-yaml", self._validate_yaml),
            ("GET", "/api/models/{repo}/revision/{rev}", self._repo_info),
            ("GET", "/api/models/{repo}", self._repo_info),
            ("POST", "/api/models/{repo}/preupload/{rev}", self._preupload),
            ("POST", "/api/models/{repo}/commit/{rev}", self._commit),
            ("POST", "/api/models/{repo}/branch/{rev}", self._create_branch),
            ("GET", "/api/models/{repo}/refs", self._refs),
            ("GET", "/api/models/{repo}/commits/{rev}", self._list_commits),
            ("GET", "/api/models/{repo}/tree/{rev}", self._tree),
            ("GET", "/api/models/{repo}/tree/{rev}/{path}", self._tree),
            ("POST", "/api/models/{repo}/paths-info/{rev}", self._paths_info),
            ("POST", "/{repo}.git/info/lfs/objects/batch", self._lfs_batch),
            ("PUT", "/lfs-storage/{repo}/{oid}", self._lfs_put),
            ("POST", "/lfs-verify/{repo}/{oid}", self._lfs_verify),
            ("HEAD", "/{repo}/resolve/{rev}/{path}", self._resolve),
            ("GET", "/{repo}/resolve/{rev}/{path}", self._resolve),
        ]
        self._compiled = [(m, _route_regex(t), t, fn) for m, t, fn in self._routes]

    # ------------------------------------------------------------------ lifecycle
    def start(self, host: str = "127.0.0.1", port: int = 0) -> "HubServer":
        server = self

        class Handler(_Handler):
            hub = server

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    @property
    def endpoint(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # ------------------------------------------------------------------ test hooks
    def fail(self, route: str, status: int = 500, times: int = 1) -> None:
        """Answer the next ``times`` requests whose route template contains ``route`` with ``status``.

        ``route`` is matched against the templates in :attr:`calls` (e.g. ``"/commit/"`` or
        ``"/lfs-storage/"``). The failing request changes nothing on the server.
        """
        with self._lock:
            self._faults.append([route, status, times])

    def reset_calls(self) -> None:
        with self._lock:
            self.calls.clear()
            self._faults.clear()

    def head(self, repo_id: str, branch: str = "main") -> str:
        """Commit id a branch points to."""
        with self._lock:
            return self.repos[repo_id].branches[branch]

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """Content of every file of a revision, as the server stores it (LFS files resolved)."""
        with self._lock:
            repo = self.repos[repo_id]
            commit = repo.commits[repo.branches.get(revision, revision)]
            return {p: self._content(f) for p, f in commit.files.items()}

    def file_entry(self, repo_id: str, path: str, revision: str = "main") -> FileEntry:
        with self._lock:
            repo = self.repos[repo_id]
            return repo.commits[repo.branches.get(revision, revision)].files[path]

    # ------------------------------------------------------------------ dispatch
    def handle(self, method: str, raw_path: str, headers, body: bytes, base_url: str):
        """Return (status, headers, body bytes, route template) for one request."""
        split = urlsplit(raw_path)
        query = parse_qs(split.query)
        for m, rx, template, fn in self._compiled:
            if m != method:
                continue
            match = rx.match(split.path)
            if match is None:
                continue
            params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
            with self._lock:
                for fault in self._faults:
                    if fault[0] in template and fault[2] > 0:
                        fault[2] -= 1
                        msg = f"Injected failure on {method} {template}"
                        return fault[1], {"X-Error-Message": msg}, _json({"error": msg}), template
                try:
                    req = _Request(method, params, query, headers, body, base_url, self._user(headers))
                    status, out_headers, out_body = fn(req)
                except HubError as err:
                    out_headers = {"X-Error-Message": err.message, **err.headers}
                    if err.code:
                        out_headers["X-Error-Code"] = err.code
                    return err.status, out_headers, _json({"error": err.message, **err.body}), template
            return status, out_headers, out_body, template
        msg = f"Route not implemented by the test Hub server: {method} {split.path}"
        return 501, {"X-Error-Message": msg}, _json({"error": msg}), "<unhandled>"

    # ------------------------------------------------------------------ helpers
    def _user(self, headers) -> str | None:
        auth = headers.get("Authorization")
        if not auth:
            return None
        token = auth.removeprefix("Bearer ").strip()
        user = self.tokens.get(token)
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return user

    def _can_write(self, user: str | None, namespace: str) -> bool:
        return user is not None and (user == namespace or user in self.orgs.get(namespace, []))

    def _get_repo(self, req: "_Request", write: bool = False) -> Repo:
        repo = self.repos.get(req.params["repo"])
        visible = repo is not None and (not repo.private or self._can_write(req.user, repo.repo_id.split("/")[0]))
        if not visible:
            # Like the Hub: a private repo seen without the right token looks missing (401 when anonymous).
            status = 401 if req.user is None else 404
            raise HubError(status, f"Repository Not Found for url: {req.params['repo']}.", "RepoNotFound")
        if write and not self._can_write(req.user, repo.repo_id.split("/")[0]):
            raise HubError(
                401 if req.user is None else 403,
                f"You don't have the rights to write to {repo.repo_id}",
            )
        return repo

    @staticmethod
    def _resolve_rev(repo: Repo, rev: str) -> Commit:
        oid = repo.branches.get(rev)
        if oid is None and rev in repo.commits:
            oid = rev
        if oid is None:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return repo.commits[oid]

    def _content(self, entry: FileEntry) -> bytes:
        return entry.data if entry.lfs_oid is None else self.lfs[entry.lfs_oid]

    def _new_commit(self, repo: Repo, branch: str, parent: str | None, title: str, message: str, files) -> Commit:
        digest = hashlib.sha1()
        digest.update(json.dumps([parent, title, message, _now(), len(repo.commits)]).encode())
        for path in sorted(files):
            digest.update(f"{path}\0{files[path].etag}\n".encode())
        commit = Commit(digest.hexdigest(), parent, title, message, files)
        repo.commits[commit.oid] = commit
        repo.branches[branch] = commit.oid
        return commit

    # ------------------------------------------------------------------ routes
    def _whoami(self, req):
        if req.user is None:
            raise HubError(401, "Invalid user token.")
        orgs = [{"name": o, "type": "org"} for o, members in self.orgs.items() if req.user in members]
        return 200, {}, _json({"type": "user", "name": req.user, "fullname": req.user, "orgs": orgs,
                              "auth": {"type": "access_token", "accessToken": {"role": "write"}}})

    def _create_repo(self, req):
        payload = req.json()
        if payload.get("type", "model") not in (None, "model"):
            raise HubError(400, "This test server only hosts model repos.")
        if req.user is None:
            raise HubError(401, "You must be authenticated to create a repo.")
        namespace = payload.get("organization") or req.user
        name = payload["name"]
        if not self._can_write(req.user, namespace):
            raise HubError(403, f"You don't have the rights to create a repo under '{namespace}'.")
        repo_id = f"{namespace}/{name}"
        url = f"{req.base_url}/{repo_id}"
        if repo_id in self.repos:
            # The Hub answers an existing repo with 409 and its url (create_repo(exist_ok=True) reads it).
            raise HubError(409, "You already created this model repo", body={"url": url})
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        repo = Repo(repo_id, namespace, private)
        # The Hub's first commit holds a default .gitattributes routing binary files through LFS.
        ga = FileEntry(".gitattributes", len(DEFAULT_GITATTRIBUTES), git_blob_sha1(DEFAULT_GITATTRIBUTES),
                       data=DEFAULT_GITATTRIBUTES)
        self._new_commit(repo, "main", None, "initial commit", "", {".gitattributes": ga})
        self.repos[repo_id] = repo
        return 200, {}, _json({"url": url, "name": repo_id, "id": repo_id})

    def _delete_repo(self, req):
        payload = req.json()
        repo_id = f"{payload.get('organization') or req.user}/{payload['name']}"
        req.params["repo"] = repo_id
        self._get_repo(req, write=True)
        del self.repos[repo_id]
        return 200, {}, b""

    def _validate_yaml(self, req):
        content = req.json().get("content", "")
        errors = []
        match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, re.S)
        if match:
            try:
                meta = yaml.safe_load(match.group(1))
            except yaml.YAMLError as exc:
                meta, errors = None, [{"message": f"Invalid YAML: {exc}"}]
            if not errors and not isinstance(meta, dict):
                errors.append({"message": "Metadata must be a YAML mapping."})
            if isinstance(meta, dict):
                errors += _check_metadata(meta)
        if errors:
            return 400, {}, _json({"errors": errors, "warnings": []})
        warnings = [] if match else [{"message": "Empty or missing yaml metadata in repo card"}]
        return 200, {}, _json({"errors": [], "warnings": warnings})

    def _repo_info(self, req):
        repo = self._get_repo(req)
        commit = self._resolve_rev(repo, req.params.get("rev", "main"))
        blobs = req.query.get("blobs", ["false"])[0].lower() == "true"
        siblings = []
        for path, entry in sorted(commit.files.items()):
            sib: dict = {"rfilename": path}
            if blobs:
                info = entry.to_json()
                sib.update(size=entry.size, blobId=entry.blob_id)
                if "lfs" in info:
                    sib["lfs"] = {"sha256": entry.lfs_oid, "size": entry.size,
                                  "pointerSize": info["lfs"]["pointerSize"]}
            siblings.append(sib)
        card = {}
        if "README.md" in commit.files:
            card = _front_matter(self._content(commit.files["README.md"]).decode("utf-8", "replace"))
        body = {
            "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id,
            "modelId": repo.repo_id, "author": repo.owner, "sha": commit.oid, "lastModified": commit.date,
            "createdAt": repo.created_at, "private": repo.private, "gated": False, "disabled": False,
            "downloads": 0, "likes": 0, "tags": list(card.get("tags") or []),
            "library_name": card.get("library_name"), "pipeline_tag": card.get("pipeline_tag"),
            "siblings": siblings,
        }
        if card:
            body["cardData"] = card
        return 200, {}, _json(body)

    def _preupload(self, req):
        repo = self._get_repo(req, write=True)
        commit = self._resolve_rev(repo, req.params["rev"])
        files = []
        for f in req.json()["files"]:
            sample = base64.b64decode(f["sample"])
            lfs = f["path"].endswith(LFS_EXTENSIONS) or f["size"] >= LFS_SIZE_THRESHOLD or b"\0" in sample
            existing = commit.files.get(f["path"])
            files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                          "oid": existing.lfs_oid or existing.blob_id if existing else None})
        return 200, {}, _json({"files": files, "commitOid": commit.oid})

    def _lfs_batch(self, req):
        repo = self._get_repo(req, write=True)
        payload = req.json()
        if payload.get("operation") != "upload":
            raise HubError(400, "Only the upload operation is supported.")
        objects = []
        for obj in payload["objects"]:
            oid, size = obj["oid"], obj["size"]
            if oid in repo.lfs_oids and len(self.lfs[oid]) == size:
                objects.append({"oid": oid, "size": size})  # already stored: no actions
            else:
                objects.append({"oid": oid, "size": size, "authenticated": True, "actions": {
                    "upload": {"href": f"{req.base_url}/lfs-storage/{repo.repo_id}/{oid}"},
                    "verify": {"href": f"{req.base_url}/lfs-verify/{repo.repo_id}/{oid}"},
                }})
        return 200, {"Content-Type": "application/vnd.git-lfs+json"}, _json({"transfer": "basic",
                                                                               "objects": objects})

    def _lfs_put(self, req):
        # Like a pre-signed storage URL: no Authorization header, the URL itself names the repo.
        repo = self.repos.get(req.params["repo"])
        oid = req.params["oid"]
        if repo is None:
            raise HubError(404, f"No upload expected for {req.params['repo']}.")
        if hashlib.sha256(req.body).hexdigest() != oid:
            raise HubError(400, f"Uploaded content does not match sha256 {oid}.")
        self.lfs[oid] = req.body
        repo.lfs_oids.add(oid)
        return 200, {"ETag": f'"{hashlib.md5(req.body).hexdigest()}"'}, b""

    def _lfs_verify(self, req):
        payload = req.json()
        oid = req.params["oid"]
        repo = self.repos.get(req.params["repo"])
        if repo is None or oid not in repo.lfs_oids or len(self.lfs[oid]) != payload.get("size"):
            raise HubError(404, f"LFS object {oid} was not uploaded.")
        return 200, {}, _json({"success": True})

    def _commit(self, req):
        repo = self._get_repo(req, write=True)
        branch = req.params["rev"]
        if branch not in repo.branches:
            raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        if req.query.get("create_pr"):
            raise HubError(400, "Pull requests are not supported by the test Hub server.")
        lines = [json.loads(line) for line in req.body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The commit payload must start with a header line.")
        header = lines[0]["value"]
        head = repo.branches[branch]
        if header.get("parentCommit") not in (None, head):
            raise HubError(412, f"A commit has happened since {header['parentCommit']}; the branch is at {head}.")
        files = dict(repo.commits[head].files)
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            path = value["path"]
            if key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, f"Unsupported encoding for {path}.")
                data = base64.b64decode(value["content"])
                files[path] = FileEntry(path, len(data), git_blob_sha1(data), data=data)
            elif key == "lfsFile":
                oid = value["oid"]
                if oid not in repo.lfs_oids:
                    raise HubError(422, f"LFS object {oid} for {path} was never uploaded to {repo.repo_id}.")
                size = len(self.lfs[oid])
                if value.get("size") not in (None, size):
                    raise HubError(422, f"Size mismatch for {path}: {value['size']} != {size}.")
                pointer = LFS_POINTER.format(oid=oid, size=size).encode()
                files[path] = FileEntry(path, size, git_blob_sha1(pointer), lfs_oid=oid)
            elif key == "deletedFile":
                if files.pop(path, None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            elif key == "deletedFolder":
                prefix = path.rstrip("/") + "/"
                for p in [p for p in files if p.startswith(prefix)]:
                    del files[p]
            else:
                raise HubError(400, f"Unknown commit operation {key!r}.")
        commit = self._new_commit(repo, branch, head, header.get("summary", ""), header.get("description", ""), files)
        return 200, {}, _json({"success": True, "commitOid": commit.oid, "hookOutput": "", "pullRequestUrl": None,
                              "commitUrl": f"{req.base_url}/{repo.repo_id}/commit/{commit.oid}"})

    def _create_branch(self, req):
        repo = self._get_repo(req, write=True)
        branch = req.params["rev"]
        if branch in repo.branches:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        start = (req.json() if req.body else {}).get("startingPoint") or "main"
        repo.branches[branch] = self._resolve_rev(repo, start).oid
        return 200, {}, b"{}"

    def _refs(self, req):
        repo = self._get_repo(req)
        branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": oid} for b, oid in repo.branches.items()]
        return 200, {}, _json({"branches": branches, "converts": [], "tags": []})

    def _list_commits(self, req):
        repo = self._get_repo(req)
        commit = self._resolve_rev(repo, req.params["rev"])
        out = []
        while commit is not None:
            out.append({"id": commit.oid, "title": commit.title, "message": commit.message,
                        "date": commit.date, "authors": [{"user": repo.owner}]})
            commit = repo.commits.get(commit.parent) if commit.parent else None
        return 200, {}, _json(out)

    def _entries(self, commit: Commit, paths: list[str]) -> list[dict]:
        out = []
        for path in paths:
            path = path.strip("/")
            if path in commit.files:
                out.append(commit.files[path].to_json())
            elif any(p.startswith(path + "/") for p in commit.files):
                out.append(_folder(path, commit))
        return out

    def _tree(self, req):
        repo = self._get_repo(req)
        commit = self._resolve_rev(repo, req.params["rev"])
        base = req.params.get("path", "").strip("/")
        recursive = req.query.get("recursive", ["false"])[0].lower() == "true"
        prefix = base + "/" if base else ""
        under = sorted(p for p in commit.files if p.startswith(prefix))
        if base and not under:
            raise HubError(404, f"Entry not found: {base}", "EntryNotFound",
                           headers={"X-Repo-Commit": commit.oid})
        entries, folders = [], set()
        for path in under:
            parts = path[len(prefix):].split("/")
            for depth in range(1, len(parts)):
                folder = prefix + "/".join(parts[:depth])
                if (recursive or depth == 1) and folder not in folders:
                    folders.add(folder)
                    entries.append(_folder(folder, commit))
            if recursive or len(parts) == 1:
                entries.append(commit.files[path].to_json())
        return 200, {}, _json(entries)

    def _paths_info(self, req):
        repo = self._get_repo(req)
        commit = self._resolve_rev(repo, req.params["rev"])
        if req.headers.get("Content-Type", "").startswith("application/json"):
            paths = req.json().get("paths", [])
        else:
            paths = parse_qs(req.body.decode()).get("paths", [])
        return 200, {}, _json(self._entries(commit, paths))

    def _resolve(self, req):
        repo = self._get_repo(req)
        commit = self._resolve_rev(repo, req.params["rev"])
        path = req.params["path"]
        entry = commit.files.get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", headers={"X-Repo-Commit": commit.oid})
        data = self._content(entry)
        headers = {"ETag": f'"{entry.etag}"', "X-Repo-Commit": commit.oid, "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        if entry.lfs_oid is not None:
            headers.update({"X-Linked-Etag": f'"{entry.lfs_oid}"', "X-Linked-Size": str(entry.size)})
        status = 200
        rng = req.headers.get("Range")
        if rng:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            if m is None:
                raise HubError(416, f"Unsupported Range header {rng!r}.")
            start_s, end_s = m.groups()
            if start_s == "":  # suffix range: last N bytes
                start, end = max(0, len(data) - int(end_s)), len(data) - 1
            else:
                start, end = int(start_s), min(int(end_s) if end_s else len(data) - 1, len(data) - 1)
            if start >= len(data) and len(data) > 0:
                raise HubError(416, "Range not satisfiable.", headers={"Content-Range": f"bytes */{len(data)}"})
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start:end + 1], 206
        return status, headers, data


def _folder(path: str, commit: Commit) -> dict:
    digest = hashlib.sha1(path.encode())
    for p, f in sorted(commit.files.items()):
        if p.startswith(path + "/"):
            digest.update(f"{p}{f.etag}".encode())
    return {"type": "directory", "path": path, "oid": digest.hexdigest()}


def _front_matter(text: str) -> dict:
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if not match:
        return {}
    try:
        meta = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _check_metadata(meta: dict) -> list[dict]:
    """The structural checks the Hub applies to model card metadata that matter for our cards."""
    errors = []
    for key in ("tags", "datasets", "language"):
        value = meta.get(key)
        if value is not None and not (isinstance(value, str) or
                                      (isinstance(value, list) and all(isinstance(v, str) for v in value))):
            errors.append({"message": f'"{key}" must be a string or a list of strings'})
    base = meta.get("base_model")
    if base is not None and not (isinstance(base, str) or (isinstance(base, list) and all(isinstance(b, str)
                                                                                          for b in base))):
        errors.append({"message": '"base_model" must be a string or a list of strings'})
    index = meta.get("model-index")
    if index is not None:
        if not isinstance(index, list):
            errors.append({"message": '"model-index" must be an array'})
        else:
            for model in index:
                if not isinstance(model, dict) or "name" not in model:
                    errors.append({"message": '"model-index[].name" is required'})
                    continue
                for result in model.get("results", []):
                    if not {"task", "dataset", "metrics"} <= set(result):
                        errors.append({"message": '"model-index[].results[]" needs task, dataset and metrics'})
                    elif not all("type" in m and "value" in m for m in result["metrics"]):
                        errors.append({"message": '"metrics[]" needs a type and a value'})
    return errors


def _json(obj) -> bytes:
    return json.dumps(obj).encode()


@dataclass
class _Request:
    method: str
    params: dict
    query: dict
    headers: object
    body: bytes
    base_url: str
    user: str | None

    def json(self) -> dict:
        return json.loads(self.body or b"{}")


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _serve(self) -> None:
        body = self._read_body()
        base_url = f"http://{self.headers.get('Host')}"
        try:
            status, headers, out, route = self.hub.handle(self.command, self.path, self.headers, body, base_url)
        except Exception as exc:  # a bug in the server must show up in the test, not hang the client
            status, headers, out, route = 500, {}, _json({"error": f"test server crashed: {exc!r}"}), "<crash>"
        with self.hub._lock:
            self.hub.calls.append(Call(self.command, route, urlsplit(self.path).path, status,
                                       self.headers.get("Authorization") is not None))
        self.send_response(status)
        headers = {"Content-Type": "application/json", **headers}
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _serve


def point_client_at(endpoint: str, home, monkeypatch) -> None:
    """Make huggingface_hub, transformers and sentence-transformers talk to ``endpoint``, caching under ``home``.

    ``HF_ENDPOINT`` and friends are read once, when ``huggingface_hub.constants`` is imported, so setting
    the environment is not enough inside a running test session: the module constants derived from it and
    the HfApi instances created at import time are patched too (``monkeypatch`` undoes all of it).
    """
    import huggingface_hub
    import huggingface_hub.hf_api
    from huggingface_hub import constants
    from huggingface_hub.utils import _http

    home = str(home)
    hub_cache = f"{home}/hub"
    env = {
        "HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0",
        "HF_HOME": home, "HF_HUB_CACHE": hub_cache, "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1", "SENTENCE_TRANSFORMERS_HOME": f"{home}/st",
        "HF_TOKEN_PATH": f"{home}/token",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(key, raising=False)
    values = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HUB_OFFLINE": False, "HF_HUB_DISABLE_XET": True, "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_UPDATE_CHECK": True, "HF_HOME": home, "HF_HUB_CACHE": hub_cache,
        "HUGGINGFACE_HUB_CACHE": hub_cache, "HF_ASSETS_CACHE": f"{home}/assets", "HF_XET_CACHE": f"{home}/xet",
        "HF_TOKEN_PATH": f"{home}/token", "HF_STORED_TOKENS_PATH": f"{home}/stored_tokens",
        "CHECK_FOR_UPDATE_DONE_PATH": f"{home}/.check_for_update_done",
        "AGENT_HARNESSES_PATH": f"{home}/.agent_harnesses.json",
    }
    for name, value in values.items():
        if hasattr(constants, name):
            monkeypatch.setattr(constants, name, value)
    # HfApi instances built at import time captured the old endpoint.
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", endpoint)
    try:
        import transformers.utils.hub as tf_hub

        monkeypatch.setattr(tf_hub, "_hf_api", None)
    except ImportError:
        pass
    # A fresh HTTP client: the shared one may hold connections to a previous test server.
    _http.close_session()
