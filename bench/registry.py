"""One registry per kind (datasets, models, methods): names map to factories.

An unknown name is a ConfigError that lists the valid names, so a typo in a config stops
before any job starts with a message that says what to write instead.

`Catalog` answers what checking and planning a configuration needs to know about the three
registries (names, method flags, resolved method options) without importing them, and so
without importing torch, from an index of the registries (see its docstring).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar

from bench.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> objects. An entry is registered by its module (`@REG.register(name)`) or
    declared lazily (`REG.lazy(name, "module:attr")`): its module is imported on first `get`,
    so listing names never imports an optional library (timm's lazy entry points)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._lazy: dict[str, str] = {}  # name -> "module:attr", until first used

    @classmethod
    def of(cls, kind: str, entries: Mapping[str, T]) -> Registry[T]:
        """A registry holding `entries` (e.g. the names and flags of an index)."""
        reg: Registry[T] = cls(kind)
        reg._entries.update(entries)
        return reg

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: `@MODELS.register("resnet18")`."""

        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            target = self._lazy.pop(name, None)
            where = f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', '?')}"
            if target is not None and target != where:
                raise ValueError(f"{self.kind} '{name}' is declared as {target} but registered "
                                 f"by {where}")
            self._entries[name] = obj
            return obj

        return add

    def lazy(self, name: str, target: str) -> None:
        """Declare entry `name` as `target` ("module:attr"), imported on first `get`."""
        if name in self._entries or name in self._lazy:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._lazy[name] = target

    def get(self, name: str) -> T:
        if name not in self._entries and name in self._lazy:
            module, _, attr = self._lazy[name].partition(":")
            obj = getattr(importlib.import_module(module), attr)  # registers, if decorated
            if name not in self._entries:
                self._lazy.pop(name, None)
                self._entries[name] = obj
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, self.names(), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        return f"unknown {self.kind} '{name}'.{hint} Valid {self.kind}s: {', '.join(self.names())}"

    def names(self) -> list[str]:
        return sorted({*self._entries, *self._lazy})

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._lazy

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())


# ----------------------------------------------------------------------------- the index

BENCH = Path(__file__).resolve().parent
INDEX_VERSION = 1
INDEX_ENV = "MEMREPRO_REGISTRY_INDEX"  # "off": always import the registries
CACHE_ENV = "MEMREPRO_CACHE_DIR"  # where the index lives (default ~/.cache/memrepro)
# The method class attributes the harness reads while planning (and the estimator's family).
METHOD_FLAGS = ("needs_ranking", "needs_grad_norms", "owns_loop", "sizes_to_budget")
MAX_OPTION_SETS = 5000  # remembered resolve_options answers; the memo restarts beyond this


def _source_files() -> list[Path]:
    """Every module whose code can change what a registry holds: the harness, the studies
    (also those outside the repository, MEMREPRO_STUDIES_PATH), and torch's version file."""
    files = sorted(BENCH.rglob("*.py"))
    for extra in filter(None, os.environ.get("MEMREPRO_STUDIES_PATH", "").split(os.pathsep)):
        files += sorted(Path(extra).rglob("*.py"))
    spec = importlib.util.find_spec("torch")  # finds the package without importing it
    if spec is not None and spec.origin:
        files.append(Path(spec.origin).parent / "version.py")
    return files


def source_fingerprint() -> str:
    """sha256 over the path and content of every file in `_source_files` (~5 ms)."""
    h = hashlib.sha256(f"index v{INDEX_VERSION} {sys.version}".encode())
    for path in _source_files():
        try:
            data = path.read_bytes()
        except OSError:
            continue
        h.update(f"\0{path}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def index_path() -> Path:
    """One index per checkout (its folder's path, hashed): two clones on one machine (CI's,
    a test's fresh clone, a user's second worktree) would otherwise rebuild each other's."""
    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "memrepro")
    checkout = hashlib.sha256(str(Path(__file__).resolve().parent.parent).encode())
    return Path(root) / f"registry-index-{checkout.hexdigest()[:12]}.json"


def _prune_indexes(keep: Path, max_age_s: float = 7 * 86400) -> None:
    """Drop other checkouts' indexes unused for a week (clones come and go)."""
    now = time.time()
    for other in keep.parent.glob("registry-index*.json"):
        try:
            if other != keep and now - other.stat().st_mtime > max_age_s:
                other.unlink()
        except OSError:
            pass


def _live_loaded() -> bool:
    return any(m in sys.modules for m in ("bench.methods", "bench.models", "bench.data"))


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


class Catalog:
    """Names, method flags and resolved method options, for checking and planning configs.

    Two sources, one answer. When this process has imported a registry (training, the tests,
    anything that builds a model), the catalog reads the live registries. Otherwise it reads
    an index file (`index_path()`: the names of every method, model and dataset, each
    method's flags, and the answers `resolve_options` gave for each option set seen so far)
    that is valid only for the exact source it was built from (`source_fingerprint`: every
    `.py` of bench/ and of external studies, and torch's version). A missing or stale index,
    an unknown name or an option set not answered before imports the registries (torch) and
    answers from the classes; the index is then rewritten with what was learnt. So the index
    only saves time: it never changes an answer. `MEMREPRO_REGISTRY_INDEX=off` disables it.
    """

    def __init__(self) -> None:
        self._live = _live_loaded() or os.environ.get(INDEX_ENV, "").lower() == "off"
        self._index: dict[str, Any] | None = None
        self._dirty = False
        self._fingerprint: str | None = None
        if not self._live:
            self._fingerprint = source_fingerprint()
            self._index = self._read_index()
            if self._index is None:
                self._build_index()

    # -- what callers ask ----------------------------------------------------------------

    @property
    def uses_index(self) -> bool:
        return not self._live

    def methods(self) -> Registry[Any]:
        """The method registry; from the index, each entry is an `IndexedClass` that holds the
        class's data attributes (flags, defaults, declared metrics, ...)."""
        if self._live:
            return _live()[0]
        return Registry.of("method", {name: IndexedClass(name, attrs) for name, attrs
                                      in self._index["methods"].items()})

    def models(self) -> Registry[Any]:
        if self._live:
            return _live()[1]
        return Registry.of("model", dict.fromkeys(self._index["models"], True))

    def datasets(self) -> Registry[Any]:
        if self._live:
            return _live()[2]
        return Registry.of("dataset", dict.fromkeys(self._index["datasets"], True))

    def method_flag(self, impl: str, flag: str) -> bool:
        if self._live:
            return bool(getattr(_live()[0].get(impl), flag, False))
        meta = self._index["methods"].get(impl)
        if meta is None:
            raise ConfigError(self.methods().unknown_message(impl))
        return bool(meta.get(flag, False))

    def resolve_method_options(self, impl: str, options: dict[str, Any]) -> dict[str, Any]:
        """`METHODS.get(impl).resolve_options(options)`, answered from the index when it can."""
        if self._live:
            return _live()[0].get(impl).resolve_options(options)
        if impl not in self._index["methods"]:
            raise ConfigError(self.methods().unknown_message(impl))
        memo = self._index["options"].setdefault(impl, {})
        key = _canonical(options)
        answer = memo.get(key)
        if answer is None:
            try:
                answer = {"ok": _live()[0].get(impl).resolve_options(options)}
            except ConfigError as e:
                answer = {"error": str(e)}
            memo[key] = json.loads(_canonical(answer))  # as it reads back from the file
            self._dirty = True
        if "error" in answer:
            raise ConfigError(answer["error"])
        return json.loads(_canonical(answer["ok"]))  # a fresh copy for the caller

    def remembered(self, kind: str, key: Any, compute: Callable[[], list[str]]) -> list[str]:
        """`compute()`, a list of problems that is a pure function of the source and of `key`
        (check_config's claims and model/dataset checks, which import torch and SciPy),
        answered from the index when this source has answered it before."""
        if self._live:
            return compute()
        memo = self._index.setdefault("checks", {})
        digest = kind + ":" + hashlib.sha256(_canonical(key).encode()).hexdigest()
        answer = memo.get(digest)
        if answer is None:
            answer = memo[digest] = [str(p) for p in compute()]
            self._dirty = True
        return list(answer)

    def save(self) -> None:
        """Write what this process learnt back to the index (atomically; best effort: the
        index is a cache, so an unwritable cache folder only costs the next run time)."""
        if self._live or not self._dirty:
            return
        if sum(len(m) for m in self._index["options"].values()) > MAX_OPTION_SETS:
            self._index["options"] = {}
        if len(self._index.get("checks", {})) > MAX_OPTION_SETS:
            self._index["checks"] = {}
        path = index_path()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self._index))
            os.replace(tmp, path)
            self._dirty = False
            _prune_indexes(path)
        except OSError:
            tmp.unlink(missing_ok=True)

    # -- the index -------------------------------------------------------------------------

    def _read_index(self) -> dict[str, Any] | None:
        try:
            doc = json.loads(index_path().read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(doc, dict) or doc.get("fingerprint") != self._fingerprint:
            return None
        return doc

    def _build_index(self) -> None:
        """Import the registries (torch) and record their names and each method class's data
        attributes."""
        methods, models, datasets = _live()
        self._index = {
            "fingerprint": self._fingerprint,
            "methods": {name: class_data(methods.get(name)) for name in methods.names()},
            "models": models.names(),
            "datasets": datasets.names(),
            "options": {},
        }
        self._dirty = True


def class_data(cls: type) -> dict[str, Any]:
    """Every public class attribute of `cls` that is plain data (what JSON holds: flags,
    defaults, names, declared metrics), as it reads back from JSON."""
    out: dict[str, Any] = {}
    for name in dir(cls):
        if name.startswith("_"):
            continue
        value = getattr(cls, name, None)
        if callable(value) or isinstance(value, (property, classmethod, staticmethod)):
            continue
        try:
            out[name] = json.loads(json.dumps(value))
        except (TypeError, ValueError):
            continue  # not plain data
    return out


class IndexedClass:
    """A registered class as the index knows it: its data attributes (`class_data`). Asking
    for anything else (a method, an attribute that is not plain data) is an error that says
    so, rather than a silent default."""

    def __init__(self, name: str, attrs: dict[str, Any]) -> None:
        self.__dict__.update(attrs)
        self._indexed_name = name

    def __getattr__(self, attr: str) -> Any:
        raise AttributeError(f"the registry index holds only the data attributes of "
                             f"'{self._indexed_name}', not '{attr}'; use the live registry "
                             f"(bench.methods.METHODS) for it")


_CATALOG: Catalog | None = None


def catalog() -> Catalog:
    """The process's catalog. An index-backed one gives way to the live registries once this
    process imports them (a test may then register a method of its own)."""
    global _CATALOG
    if _CATALOG is None or (_CATALOG.uses_index and _live_loaded()):
        if _CATALOG is not None:
            _CATALOG.save()
        _CATALOG = Catalog()
    return _CATALOG


def _live() -> tuple[Registry[Any], Registry[Any], Registry[Any]]:
    """The live registries (importing them imports torch and every study package)."""
    from bench.data import DATASETS
    from bench.methods import METHODS
    from bench.models import MODELS

    return METHODS, MODELS, DATASETS
