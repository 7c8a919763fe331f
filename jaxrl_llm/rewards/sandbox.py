"""Run untrusted Python (model-written code) in a bounded child process.

Every job runs in a fresh interpreter, ``sys.executable -I -S -c <bootstrap>``, started with
:class:`subprocess.Popen` (never a fork of the multithreaded JAX parent, and no ``preexec_fn``,
which is unsafe with threads) in a new session, so the whole process group can be killed. The
job (code, stdin, limits) reaches the child over a pipe; a small bootstrap applies the limits and
isolation below, then ``exec``\\ s the code as ``__main__``.

Verdicts never come from the process that runs untrusted code. Tests run in a second, trusted
*judge* process that sees the solution's values only as plain data rebuilt by built-in code
(:func:`run_judged`, :mod:`jaxrl_llm.rewards.plain`); stdin/stdout programs report their output and
the parent compares it with expectations the program never saw. Every descriptor a child inherits
is one-directional: the job pipe (read), its stdout/stderr files and status pipe (write), and in a
judged run the request (read) / reply (write) pipes to the judge.

Layers, in the order the bootstrap applies them (each reports whether it took effect:
:attr:`SandboxResult.layers`):

1. ``rlimits``: CPU seconds (``RLIMIT_CPU``, SIGXCPU then SIGKILL), address space
   (``RLIMIT_AS``), file size (``RLIMIT_FSIZE``), open files, no core dumps, process count
   (``RLIMIT_NPROC``; the kernel ignores it for root, so process creation is also blocked by 4).
2. ``netns`` / ``mountns``: ``unshare(2)`` (via ctypes; Python 3.11 has no ``os.unshare``) into a
   new network namespace (only a down loopback: no network at all) and a new mount namespace in
   which every mount is read-only except the job's work directory (itself ``nosuid,nodev,noexec``),
   and ``/proc`` is covered by an empty read-only tmpfs (so ``/proc/<parent>/environ`` is not
   readable). As root this needs no user namespace; as a normal user it needs unprivileged user
   namespaces.
3. ``userns``: a final, nested user namespace drops every capability the child had over those
   namespaces, so it cannot remount anything or raise its hard limits.
4. ``seccomp``: a BPF filter (x86-64 and aarch64; ``PR_SET_NO_NEW_PRIVS`` first) that fails
   ``fork``, ``vfork``, ``execve(at)``, ``clone`` without ``CLONE_THREAD`` (threads still work),
   ``socket``, ``ptrace``, ``setrlimit``/``prlimit64``, ``(u)mount``, ``unshare``/``setns``,
   ``io_uring``, ``bpf``, ``kill``/``tgkill`` of any process but itself, and a few more, with
   ``EPERM``.
5. ``audit``: a ``sys.addaudithook`` hook that refuses socket events, ``subprocess.Popen``,
   ``os.system``, ``os.fork``/``forkpty``/``posix_spawn``/``exec*``, ``os.kill`` of others,
   everything ``ctypes``, ``open``/rename/remove/mkdir/... with a path outside the work
   directory for writing, and introspection: ``sys._getframe`` / ``_current_frames``, reading a
   traceback's, generator's or coroutine's frame, ``sys.settrace`` / ``setprofile`` and the ``gc``
   object walks (the error is also a ``ValueError``, so library code that tolerates missing
   frames, e.g. ``collections.namedtuple``, still works). It gives clean Python errors and covers
   systems where 2-4 are missing.
6. The parent: a clean environment (``PATH``, ``HOME``/``TMPDIR`` = the work dir, a UTF-8 locale;
   nothing inherited, so secrets in the parent's environment are invisible), a fresh temporary
   directory as cwd (deleted afterwards), a wall-clock limit (the process group is SIGKILLed on
   expiry), stdout/stderr redirected to files whose growth is checked while the child runs (killed
   once over ``output_bytes``; ``RLIMIT_FSIZE`` is the hard stop) and read back with a byte cap,
   and ``PR_SET_PDEATHSIG`` so a child dies with the thread that started it.

What is guaranteed (on a Linux kernel, by the OS layers 1, 2, 4 and 6, independent of what the code
does): bounded wall time, CPU time, memory, output and file sizes; a clean environment; no
process creation and no sockets when ``seccomp`` is in :attr:`SandboxResult.layers`; no network
when ``netns`` is; no writes outside the work directory when ``mountns`` is.

What is NOT guaranteed:

* The audit hook is not a security boundary: native code, interpreter internals or a clever
  object-graph walk can bypass it. It is a convenience layer; the kernel layers do the bounding.
* The child runs with the parent's uid (dropping to ``nobody`` is not possible in general: the
  interpreter may live under a private home such as ``/root/.pyenv``). Files readable by that uid
  stay readable (read-only); the only way out is the child's own stdout/stderr, so do not log raw
  sandbox output where that matters.
* What a program reports about itself (``SandboxResult.completed``, a case's stdout) is whatever
  it chooses to report; it is evidence only when compared with something it never saw.
* Judged runs accept plain data only: a test that passes the solution a function or an object of
  its own class fails (:mod:`jaxrl_llm.rewards.plain` lists the types that cross).
* Only the standard library is importable by default (``-S`` skips ``site``, hence no
  site-packages; the bootstrap restores ``exit``/``quit``, which ``site`` normally defines).
  ``site_packages=True`` runs without ``-S``.
* Without namespaces (e.g. containers that forbid ``unshare``) or on other architectures (no
  seccomp filter), only layers 1, 5 and 6 remain; check ``layers`` if it matters.
* Disk: each file is capped by ``file_bytes`` but the number of files is bounded only by CPU time.
"""

from __future__ import annotations

import ast
import builtins
import concurrent.futures
import dataclasses
import functools
import json
import math
import os
import pathlib
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Iterable, Sequence

from jaxrl_llm.rewards import plain

STATUSES = ("ok", "error", "timeout", "memory", "output_limit", "killed")

# Exit codes the bootstrap uses for its own failures (user code can imitate them, which only
# turns its result into a failure).
_EXIT_MEMORY = 97
_EXIT_OUTPUT = 98
_EXIT_BOOTSTRAP = 99


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
  """Resource limits of one sandboxed run.

  Attributes:
    cpu_s: CPU seconds (rounded up to whole seconds by ``RLIMIT_CPU``).
    wall_s: wall-clock seconds, enforced by the parent (includes interpreter start-up, ~0.1 s).
    memory_mb: address-space limit in MiB (virtual memory, so keep it well above the ~50 MiB an
      interpreter maps at start-up).
    output_bytes: cap on stdout, on stderr, and on each case's stdout; more is a failure
      (``output_limit``).
    file_bytes: largest file the child may write (``RLIMIT_FSIZE``), > ``output_bytes``.
    open_files: ``RLIMIT_NOFILE``.
    max_processes: ``RLIMIT_NPROC`` (threads count; ignored by the kernel for root).
  """

  cpu_s: float = 5.0
  wall_s: float = 10.0
  memory_mb: int = 1024
  output_bytes: int = 1 << 20
  file_bytes: int = 16 << 20
  open_files: int = 64
  max_processes: int = 64

  def __post_init__(self):
    for name in ("cpu_s", "wall_s"):
      value = getattr(self, name)
      if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"SandboxLimits.{name} must be a positive finite number, got {value!r}")
    for name, low in (("memory_mb", 32), ("output_bytes", 1), ("file_bytes", 2),
                      ("open_files", 16), ("max_processes", 1)):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"SandboxLimits.{name} must be an int >= {low}, got {value!r}")
    if self.file_bytes <= self.output_bytes:
      raise ValueError(f"SandboxLimits.file_bytes ({self.file_bytes}) must exceed output_bytes "
                       f"({self.output_bytes}) so that overlong output can be detected")


@dataclasses.dataclass(frozen=True)
class SandboxJob:
  """One program to run.

  Attributes:
    code: Python source, run as ``__main__``.
    setup: Python source run first in the same namespace (imports, helpers; script mode only).
    stdin: text on the program's standard input (script mode).
    cases: if given, "cases mode": ``code`` runs once per entry, each time in a fresh namespace
      with that entry as stdin, and its stdout is captured per case (:attr:`SandboxResult.cases`);
      ``stdin`` is ignored.
    limits: per-job limits; None = the runner's default.

  There is deliberately no way to run tests in the program's own process: code that shares a
  process with its tests can reach their expected values and the reporting channel. Tests run in
  a separate judge process (:func:`run_judged`), or the parent compares outputs (cases mode).
  """

  code: str
  setup: str = ""
  stdin: str = ""
  cases: tuple[str, ...] | None = None
  limits: SandboxLimits | None = None


@dataclasses.dataclass(frozen=True)
class CaseResult:
  """Outcome of one stdin case in cases mode.

  Attributes:
    ok: the program ended normally (or via ``sys.exit(0)``) with output within the cap.
    stdout: its standard output (at most ``output_bytes`` bytes, decoded as UTF-8).
    error: short description of the failure ("" when ok).
  """

  ok: bool
  stdout: str
  error: str = ""


@dataclasses.dataclass
class SandboxResult:
  """Outcome of one sandboxed run.

  Attributes:
    status: "ok" (exit code 0), "error" (non-zero exit: exception, syntax error, failed assert),
      "timeout" (wall or CPU limit), "memory" (MemoryError / address-space limit), "output_limit"
      or "killed" (ended by another signal, e.g. a segfault).
    returncode: the child's exit code (negative: killed by that signal); None if it never started.
    stdout: the first ``output_bytes`` bytes of stdout (script mode).
    stderr: the last ``output_bytes`` bytes of stderr.
    wall_s: wall-clock seconds of the run, cpu_s: CPU seconds used (user + system).
    completed: the program *says* it ran to its end without ``sys.exit``/``os._exit`` (a claim
      of untrusted code: never a verdict).
    syntax_error: the code (or setup) did not compile; nothing ran.
    cases: per-case results in cases mode (fewer than requested if the run ended early), else None.
    layers: the isolation layers that took effect (see the module docstring).
  """

  status: str
  returncode: int | None
  stdout: str = ""
  stderr: str = ""
  wall_s: float = 0.0
  cpu_s: float = 0.0
  completed: bool = False
  syntax_error: bool = False
  cases: list[CaseResult] | None = None
  layers: tuple[str, ...] = ()

  @property
  def ok(self) -> bool:
    """True for a run that exited with code 0 and (by its own account) ran to its end."""
    return self.status == "ok" and self.completed


# The bootstrap the child runs with ``-c`` (after the codec of ``plain.py``). It reads the job from
# stdin, applies the limits and isolation, then runs the code (script / cases / serve) or the
# trusted tests (judge).
_BOOTSTRAP_BODY = r'''

def _setup(job):
  import resource
  lim, layers = job["limits"], []
  def setlim(res, soft, hard=None):
    try:
      resource.setrlimit(res, (soft, soft if hard is None else hard))
      return True
    except (ValueError, OSError):
      return False
  cpu = max(1, int(-(-lim["cpu_s"] // 1)))
  ok = setlim(resource.RLIMIT_CPU, cpu, cpu + 1)
  ok &= setlim(resource.RLIMIT_AS, lim["memory_mb"] << 20)
  ok &= setlim(resource.RLIMIT_FSIZE, lim["file_bytes"])
  ok &= setlim(resource.RLIMIT_NOFILE, lim["open_files"])
  ok &= setlim(resource.RLIMIT_CORE, 0)
  ok &= setlim(resource.RLIMIT_NPROC, lim["max_processes"])
  if ok:
    layers.append("rlimits")
  if job["mode"] == "judge":
    # Trusted code that handles plain data only: the limits bound it; the namespaces and seccomp
    # (about a third of a child's start-up) protect nothing here.
    return layers
  try:
    import ctypes
  except Exception:
    return layers
  try:
    _isolate(ctypes, job["work"], layers)
  finally:
    for name in [m for m in sys.modules if m == "ctypes" or m.startswith(("ctypes.", "_ctypes"))]:
      del sys.modules[name]
  return layers

def _isolate(ctypes, work, layers):
  libc = ctypes.CDLL(None, use_errno=True)
  libc.syscall.restype = ctypes.c_long
  NEWNS, NEWUSER, NEWNET = 0x00020000, 0x10000000, 0x40000000
  uid, gid = os.geteuid(), os.getegid()
  def write(path, text):
    try:
      with open(path, "w") as f:
        f.write(text)
      return True
    except OSError:
      return False
  if uid == 0:
    spaces = libc.unshare(NEWNS | NEWNET) == 0
  else:
    spaces = libc.unshare(NEWUSER | NEWNS | NEWNET) == 0
    if spaces:
      write("/proc/self/setgroups", "deny")
      spaces = (write("/proc/self/uid_map", f"{uid} {uid} 1") and
                write("/proc/self/gid_map", f"{gid} {gid} 1"))
  if spaces:
    layers.append("netns")
    class MountAttr(ctypes.Structure):
      _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                  ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]
    RDONLY, NOSUID, NODEV, NOEXEC = 1, 2, 4, 8
    MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 0x40000
    w = os.fsencode(work)
    ro = MountAttr(RDONLY | NOSUID, 0, 0, 0)
    rw = MountAttr(NOSUID | NODEV | NOEXEC, RDONLY, 0, 0)
    if (libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) == 0 and
        libc.mount(w, w, None, MS_BIND, None) == 0 and
        libc.syscall(442, -100, b"/", 0x8000, ctypes.byref(ro), 32) == 0 and
        libc.syscall(442, -100, w, 0, ctypes.byref(rw), 32) == 0):
      layers.append("mountns")
      os.chdir(work)  # the old cwd is the directory under the bind mount, now read-only.
      if libc.mount(b"none", b"/proc", b"tmpfs", RDONLY | NOSUID | NODEV | NOEXEC,
                    b"size=4k,mode=555") == 0:
        layers.append("noproc")
  if libc.unshare(NEWUSER) == 0:
    layers.append("userns")
  libc.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL (after any credential change)
  if _seccomp(ctypes, libc):
    layers.append("seccomp")

def _seccomp(ctypes, libc):
  machine = os.uname().machine
  if machine == "x86_64":
    arch, x32 = 0xC000003E, True
    nr = dict(fork=57, vfork=58, execve=59, execveat=322, clone=56, clone3=435, socket=41,
              kill=62, tkill=200, tgkill=234, ptrace=101, process_vm_readv=310,
              process_vm_writev=311, setrlimit=160, prlimit64=302, unshare=272, setns=308,
              mount=165, umount2=166, pivot_root=155, chroot=161, io_uring_setup=425, bpf=321,
              perf_event_open=298, userfaultfd=323, keyctl=250, add_key=248, request_key=249,
              pidfd_send_signal=424, pidfd_getfd=438, open_tree=428, move_mount=429, fsopen=430,
              fsconfig=431, fsmount=432, mount_setattr=442)
  elif machine == "aarch64":
    arch, x32 = 0xC00000B7, False
    nr = dict(execve=221, execveat=281, clone=220, clone3=435, socket=198, kill=129, tkill=130,
              tgkill=131, ptrace=117, process_vm_readv=270, process_vm_writev=271, setrlimit=164,
              prlimit64=261, unshare=97, setns=268, mount=40, umount2=39, pivot_root=41,
              chroot=51, io_uring_setup=425, bpf=280, perf_event_open=241, userfaultfd=282,
              keyctl=219, add_key=217, request_key=218, pidfd_send_signal=424, pidfd_getfd=438,
              open_tree=428, move_mount=429, fsopen=430, fsconfig=431, fsmount=432,
              mount_setattr=442)
  else:
    return False
  LD, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06
  ALLOW, KILL = 0x7FFF0000, 0x80000000
  EPERM, ENOSYS = 0x00050000 | 1, 0x00050000 | 38
  pid = os.getpid()
  prog = [(LD, 0, 0, 4), (JEQ, 1, 0, arch), (RET, 0, 0, KILL), (LD, 0, 0, 0)]
  if x32:
    prog += [(JGE, 0, 1, 0x40000000), (RET, 0, 0, KILL)]
  special = ("clone", "clone3", "kill", "tgkill")
  for name, number in nr.items():
    if name not in special:
      prog += [(JEQ, 0, 1, number), (RET, 0, 0, EPERM)]
  # clone3's flags live in memory a filter cannot read: ENOSYS makes glibc fall back to clone.
  prog += [(JEQ, 0, 1, nr["clone3"]), (RET, 0, 0, ENOSYS)]
  prog += [(JEQ, 0, 4, nr["clone"]), (LD, 0, 0, 16), (JSET, 0, 1, 0x00010000),
           (RET, 0, 0, ALLOW), (RET, 0, 0, EPERM)]
  prog += [(JEQ, 0, 6, nr["kill"]), (LD, 0, 0, 16), (JEQ, 3, 0, pid), (JEQ, 2, 0, 0),
           (JEQ, 1, 0, (-pid) & 0xFFFFFFFF), (RET, 0, 0, EPERM), (RET, 0, 0, ALLOW)]
  prog += [(JEQ, 0, 4, nr["tgkill"]), (LD, 0, 0, 16), (JEQ, 0, 1, pid), (RET, 0, 0, ALLOW),
           (RET, 0, 0, EPERM)]
  prog += [(RET, 0, 0, ALLOW)]
  class Filter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                ("k", ctypes.c_uint32)]
  class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]
  table = (Filter * len(prog))(*[Filter(*ins) for ins in prog])
  fprog = Prog(len(prog), table)
  if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
    return False
  return libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) == 0  # PR_SET_SECCOMP, FILTER

class _Denied(PermissionError, ValueError):
  """Raised by the audit hook; also a ValueError, so that library code that treats a missing
  frame as "unavailable" (``collections.namedtuple``, ``enum``, ``typing``) keeps working."""

def _audit_hook(work):
  work = os.path.realpath(work)
  own = os.getpid()
  denied = ("subprocess.Popen", "os.system", "os.fork", "os.forkpty", "os.posix_spawn",
            "os.spawn", "os.exec", "os.killpg", "os.startfile", "pty.spawn",
            # Introspection: no frames (hence no caller's globals or locals) and no walks over
            # the object graph or the interpreter's threads.
            "sys._getframe", "sys._getframemodulename", "sys._current_frames",
            "sys._current_exceptions", "sys.settrace", "sys.setprofile", "gc.get_objects",
            "gc.get_referrers", "gc.get_referents", "sys.remote_exec")
  frame_attrs = frozenset(("tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_back"))
  path_events = {"os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1),
                 "os.link": (0, 1), "os.symlink": (1,), "os.chmod": (0,), "os.chown": (0,),
                 "os.truncate": (0,), "os.utime": (0,), "os.chflags": (0,), "os.lchflags": (0,),
                 "os.mkfifo": (0,), "os.mknod": (0,), "os.setxattr": (0,),
                 "os.removexattr": (0,), "shutil.rmtree": (0,), "shutil.move": (1,),
                 "shutil.copyfile": (1,), "shutil.copytree": (1,)}
  def inside(path):
    if isinstance(path, int):
      return True
    try:
      real = os.path.realpath(os.fsdecode(path))
    except Exception:
      return False
    return real == work or real.startswith(work + os.sep)
  def hook(event, args):
    if event.startswith(("socket.", "ctypes.")) or event in denied:
      raise _Denied(f"sandbox: {event} is not allowed")
    if event == "object.__getattr__" and len(args) > 1 and args[1] in frame_attrs:
      raise _Denied(f"sandbox: reading {args[1]} is not allowed")
    if event == "os.kill" and args[0] not in (own, 0):
      raise _Denied("sandbox: signalling other processes is not allowed")
    if event == "open":
      path, mode, flags = args
      writing = (isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT |
                                                      os.O_TRUNC | os.O_APPEND)) or (
          isinstance(mode, str) and any(c in mode for c in "wax+"))
      if writing and not inside(path):
        raise _Denied(f"sandbox: writing outside the work directory: {path!r}")
    elif event in path_events:
      for i in path_events[event]:
        if i < len(args) and not inside(args[i]):
          raise _Denied(f"sandbox: {event} outside the work directory: {args[i]!r}")
  sys.addaudithook(hook)

def _error_text(e):
  # No traceback: formatting one reads frames, which the audit hook denies (and importing the
  # module costs start-up time).
  try:
    text = str(e)
  except BaseException:
    text = ""
  return (f"{type(e).__name__}: {text}" if text else type(e).__name__)[-300:]

class _Lines:
  """Newline-framed messages on a pipe, read with a size cap (no buffering past a line)."""
  def __init__(self, fd, cap):
    self.fd, self.cap, self.buf = fd, cap, b""
  def read(self):
    while b"\n" not in self.buf:
      if len(self.buf) > self.cap:
        raise EOFError("message over the size limit")
      chunk = os.read(self.fd, 1 << 16)
      if not chunk:
        raise EOFError("the other side closed the channel")
      self.buf += chunk
    line, _, self.buf = self.buf.partition(b"\n")
    return line.decode("utf-8", "replace")

def _send(fd, text):
  data = (text + "\n").encode("utf-8", "replace")
  while data:
    data = data[os.write(fd, data):]

def _serve(job, namespace, requests, reply_fd, cap):
  """The untrusted side of a judged run: answers the judge's requests about the solution's
  objects. Values go back as plain data, other objects as handles; it never sees a test."""
  table = []
  def handle_of(x):
    table.append(x)
    return ["h", len(table) - 1]
  def obj(i):
    if not (type(i) is int and 0 <= i < len(table)):
      raise ValueError("unknown handle")
    return table[i]
  while True:
    try:
      req = loads_json(requests.read())
    except EOFError:
      os._exit(0)
    try:
      op = req["op"]
      if op == "get":
        name = req["name"]
        if name not in namespace:
          raise NameError(f"name {name!r} is not defined by the solution")
        reply = {"v": encode_plain(namespace[name], handle_of)}
      elif op == "call":
        args = [decode_plain(a, obj) for a in req["a"]]
        kwargs = {k: decode_plain(v, obj) for k, v in req["k"]}
        value = obj(req["f"])(*args, **kwargs)
        reply = {"v": encode_plain(value, handle_of),
                 "m": [encode_plain(a, handle_of) if type(a) in (list, dict, set) else None
                       for a in args]}
      elif op == "attr":
        name = req["name"]
        if name.startswith("__"):
          raise AttributeError(name)
        reply = {"v": encode_plain(getattr(obj(req["o"]), name), handle_of)}
      elif op == "iter":
        reply = {"v": encode_plain(list(itertools.islice(obj(req["o"]), 100_000)), handle_of)}
      else:
        raise ValueError(f"unknown request {op!r}")
    except MemoryError:
      os._exit(97)
    except BaseException as e:
      reply = {"e": _error_text(e), "t": type(e).__name__}
    text = dumps_json(reply)
    if len(text) > cap:
      text = dumps_json({"e": f"reply over {cap} characters"})
    _send(reply_fd, text)

class _SolutionError(Exception):
  """The solution process failed to answer (it ended, or sent something malformed)."""

# Exceptions of the solution that a test may expect (``with pytest.raises(ValueError)`` style):
# the judge raises the built-in class of that name. Never StopIteration & co., which would end a
# test's iteration early (``all(map(f, xs))``), nor exits.
_EXPECTABLE = frozenset(("ValueError", "TypeError", "KeyError", "IndexError", "LookupError",
                         "ZeroDivisionError", "ArithmeticError", "OverflowError", "RuntimeError",
                         "NotImplementedError", "AttributeError", "RecursionError", "NameError",
                         "AssertionError", "UnicodeError"))

def _raised(reply):
  name, text = reply.get("t"), str(reply.get("e"))[:300]
  if type(name) is str and name in _EXPECTABLE:
    return getattr(builtins, name)(text)
  return _SolutionError(text)

def _judge(job, report):
  """The trusted side: runs the dataset's tests, with every name the tests take from the solution
  bound to a proxy that asks the sandboxed solution process. The verdict of each test is decided
  here, on values rebuilt from plain data, and reported to the parent."""
  requests_fd, replies = job["request_fd"], _Lines(job["reply_fd"], job["limits"]["output_bytes"])
  def ask(req, args=()):
    _send(requests_fd, dumps_json(req))
    try:
      reply = loads_json(replies.read())
      if type(reply) is not dict:
        raise PlainDataError("not an object")
      value = None if "e" in reply else decode_plain(reply["v"], Remote)
    except EOFError as e:
      raise _SolutionError(f"the solution process ended ({e})") from None
    except (PlainDataError, KeyError) as e:
      raise _SolutionError(f"malformed reply from the solution process ({e})") from None
    if "e" in reply:
      raise _raised(reply)
    # Arguments the solution changed in place (lists, dicts, sets) change here too.
    for x, new in zip(args, reply.get("m") or ()):
      if new is not None and type(x) in (list, dict, set):
        new = decode_plain(new, Remote)
        if type(new) is type(x):
          x.clear()
          x.extend(new) if type(x) is list else x.update(new)
    return value
  def arg(x):
    if type(x) is Remote:
      return ["h", object.__getattribute__(x, "_id")]
    raise PlainDataError(f"cannot pass a {type(x).__name__} to the solution")
  class Remote:
    """An object that lives in the solution process: it can be called, its attributes read and
    iterated; it has no truth value and equals only itself."""
    __slots__ = ("_id",)
    def __init__(self, i):
      object.__setattr__(self, "_id", i)
    def __call__(self, *args, **kwargs):
      return ask({"op": "call", "f": object.__getattribute__(self, "_id"),
                  "a": [encode_plain(x, arg) for x in args],
                  "k": [[k, encode_plain(v, arg)] for k, v in kwargs.items()]}, args)
    def __getattr__(self, name):
      if name.startswith("__"):
        raise AttributeError(name)
      return ask({"op": "attr", "o": object.__getattribute__(self, "_id"), "name": name})
    def __iter__(self):
      return iter(ask({"op": "iter", "o": object.__getattribute__(self, "_id")}))
    def __bool__(self):
      raise TypeError("a solution object that is not plain data has no truth value")
    def __eq__(self, other):
      return self is other
    def __ne__(self, other):
      return self is not other
    __hash__ = object.__hash__
    def __repr__(self):
      return f"<solution object #{object.__getattribute__(self, '_id')}>"
  namespace = {"__name__": "__main__", "__builtins__": builtins}
  error = ""
  if job["setup"]:
    try:
      exec(compile(job["setup"], "<setup>", "exec"), namespace)
    except BaseException as e:
      error = "setup: " + _error_text(e)
  for name in job["modules"]:
    if name not in namespace:
      try:
        namespace[name] = __import__(name)
      except BaseException:
        pass
  for name in job["names"]:
    if not error and name not in namespace:
      try:
        namespace[name] = ask({"op": "get", "name": name})
      except _SolutionError:
        pass  # the test meets a NameError.
  for i, test in enumerate(job["tests"]):
    verdict = error
    if not verdict:
      try:
        exec(compile(test, f"<test {i}>", "exec"), namespace)
      except MemoryError:
        report("memory", None)
        os._exit(97)
      except BaseException as e:
        verdict = _error_text(e) or type(e).__name__
    report("verdict", {"i": i, "ok": not verdict, "error": verdict})
  os._exit(0)

def _main():
  job = loads_json(sys.stdin.buffer.read().decode("utf-8"))
  status_fd, cap = job["status_fd"], job["limits"]["output_bytes"]
  def report(kind, payload):
    try:
      _send(status_fd, kind + "\t" + dumps_json(payload))
    except OSError:
      os._exit(98)
  layers = _setup(job)
  if "site" not in sys.modules:
    builtins.exit = builtins.quit = sys.exit
  def move_fd(fd, target):
    if fd != target:  # the code may have closed ``target``, so that fd == target.
      os.dup2(fd, target)
      os.close(fd)
  def stdin_fd(text):
    fd = os.memfd_create("stdin")
    data = text.encode("utf-8")
    while data:
      data = data[os.write(fd, data):]
    os.lseek(fd, 0, 0)
    move_fd(fd, 0)
    sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)),
                                 encoding="utf-8", errors="replace")
  def run(code_obj, namespace):
    """'' when the code ended normally, 'exit' on SystemExit(0), else an error string."""
    try:
      exec(code_obj, namespace)
      return ""
    except SystemExit as e:
      return "exit" if e.code in (None, 0) else f"SystemExit({e.code!r})"
    except MemoryError:
      report("memory", None)
      sys.stderr.write("MemoryError\n")
      sys.stderr.flush()
      os._exit(97)
    except BaseException as e:
      text = _error_text(e)
      try:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
      except BaseException:
        pass
      return text or type(e).__name__
  mode = job["mode"]
  if mode == "judge":
    _audit_hook(job["work"])
    report("layers", layers)
    _judge(job, report)
  _audit_hook(job["work"])
  report("layers", layers)
  try:
    setup_obj = compile(job["setup"], "<setup>", "exec") if job["setup"] else None
    code_obj = compile(job["code"], "<solution>", "exec")
  except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
    report("syntax", None)
    sys.stderr.write(_error_text(e) + "\n")
    os._exit(1)
  if mode in ("script", "serve", "calls"):
    stdin_fd(job["stdin"])
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    error = run(setup_obj, namespace) if setup_obj is not None else ""
    if not error:
      error = run(code_obj, namespace)
    try:
      sys.stdout.flush()
    except OSError:
      os._exit(98)
    if mode == "serve":
      if error not in ("", "exit"):
        os._exit(1)
      _serve(job, namespace, _Lines(job["request_fd"], cap), job["reply_fd"], cap)
    if mode == "calls":
      # Calls that the trusted side wrote from the tests: only their return values go out.
      if error not in ("", "exit"):
        os._exit(1)
      for i, (name, a, k) in enumerate(job["calls"]):
        try:
          if name not in namespace:
            raise NameError(f"name {name!r} is not defined by the solution")
          value = namespace[name](*[decode_plain(x) for x in a],
                                  **{key: decode_plain(v) for key, v in k})
          text = dumps_json({"i": i, "v": encode_plain(value)})
          if len(text) > cap:
            raise ValueError(f"return value over {cap} characters")
        except MemoryError:
          os._exit(97)
        except BaseException as e:
          text = dumps_json({"i": i, "e": _error_text(e)})
        report("call", text)
      os._exit(0)
    if not error:
      report("done", None)
    os._exit(0 if error in ("", "exit") else 1)
  for i, text in enumerate(job["cases"]):
    stdin_fd(text)
    move_fd(os.memfd_create("stdout"), 1)
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)),
                                  encoding="utf-8", errors="replace")
    error = run(code_obj, {"__name__": "__main__", "__builtins__": builtins})
    try:
      sys.stdout.flush()
    except OSError as e:
      error = error or f"writing stdout: {e}"
    os.lseek(1, 0, 0)
    chunks, size = [], 0
    while size <= cap:
      chunk = os.read(1, cap + 1 - size)
      if not chunk:
        break
      chunks.append(chunk)
      size += len(chunk)
    data = b"".join(chunks)
    if size > cap:
      error, data = error or "output limit", data[:cap]
    report("case", {"i": i, "error": "" if error == "exit" else error,
                    "out": data.decode("utf-8", "replace")})
  os._exit(0)

try:
  _main()
except MemoryError:
  os._exit(97)
except BaseException as e:
  try:
    sys.stderr.write(_error_text(e) + "\n")
  except BaseException:
    pass
  os._exit(99)
'''


_BOOTSTRAP = ("import builtins, io, itertools, os, sys\n" +
              pathlib.Path(plain.__file__).read_text(encoding="utf-8") + _BOOTSTRAP_BODY)


def _clean_env(work: str) -> dict[str, str]:
  return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": work, "TMPDIR": work,
          "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


def _read_head(fd: int, limit: int) -> bytes:
  os.lseek(fd, 0, os.SEEK_SET)
  chunks, size = [], 0
  while size < limit:
    chunk = os.read(fd, min(1 << 16, limit - size))
    if not chunk:
      break
    chunks.append(chunk)
    size += len(chunk)
  return b"".join(chunks)


def _read_tail(fd: int, limit: int) -> bytes:
  size = os.fstat(fd).st_size
  os.lseek(fd, max(0, size - limit), os.SEEK_SET)
  return _read_head(fd, limit)


class _Child:
  """One sandboxed interpreter: its process, the parent's read ends of its stdout/stderr files and
  of its status pipe, and what has been read from that pipe."""

  def __init__(self, root: str, name: str, work: str, spec: dict, lim: SandboxLimits,
               python: str | None, site_packages: bool, extra_fds: Sequence[int] = ()):
    self.fds: list[int] = []
    self.status = bytearray()
    self.overflow = False
    child_fds = []
    try:
      for stream in ("stdout", "stderr"):
        path = os.path.join(root, f"{name}.{stream}")
        # The child gets a write-only descriptor; the parent reads through its own.
        child_fds.append(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        self.fds.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
      self.out_fd, self.err_fd = self.fds
      status_r, status_w = os.pipe2(os.O_CLOEXEC)
      self.fds.append(status_r)
      child_fds.append(status_w)
      os.set_blocking(status_r, False)
      self.status_fd = status_r
      spec = dict(spec, status_fd=status_w, work=work, limits=dataclasses.asdict(lim))
      argv = [python or sys.executable, "-I"] + ([] if site_packages else ["-S"])
      self.proc = subprocess.Popen(argv + ["-c", _BOOTSTRAP], stdin=subprocess.PIPE,
                                   stdout=child_fds[0], stderr=child_fds[1],
                                   pass_fds=(status_w, *extra_fds), cwd=work,
                                   env=_clean_env(work), start_new_session=True, close_fds=True)
    finally:
      for fd in child_fds:
        os.close(fd)
    try:
      self.proc.stdin.write(json.dumps(spec).encode("utf-8"))
    except OSError:  # the child died before reading its job; its status says why.
      pass
    finally:
      try:
        self.proc.stdin.close()
      except OSError:
        pass
    self.exit_status: int | None = None
    self.rusage = None

  def drain(self, cap: int) -> None:
    """Reads what the status pipe holds (non-blocking); past ``cap`` bytes marks an overflow."""
    while True:
      try:
        chunk = os.read(self.status_fd, 1 << 16)
      except BlockingIOError:
        return
      if not chunk:
        return
      if len(self.status) + len(chunk) > cap:
        self.overflow = True
        return
      self.status += chunk

  def exited(self) -> bool:
    # WNOWAIT leaves the child a zombie so its pid (and group id) cannot be reused before the
    # group is killed.
    info = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    return info is not None and info.si_pid == self.proc.pid

  def reap(self) -> None:
    _kill_group(self.proc.pid)
    _, self.exit_status, self.rusage = os.wait4(self.proc.pid, 0)
    self.proc.returncode = os.waitstatus_to_exitcode(self.exit_status)

  def records(self) -> list[tuple[str, object]]:
    out = []
    for line in self.status.decode("utf-8", "replace").splitlines():
      kind, sep, payload = line.partition("\t")
      if sep:
        try:
          out.append((kind, json.loads(payload)))
        except ValueError:
          pass
    return out

  def close(self) -> None:
    for fd in self.fds:
      os.close(fd)
    self.fds = []


def _kill_group(pid: int) -> None:
  try:
    os.killpg(pid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass


def _wait(children: Sequence[_Child], lim: SandboxLimits, start: float) -> str:
  """Waits until the last child has exited (or the first, the judge, in a judged run: see
  :func:`run_judged`), killing every group on the wall, output or status limit; reaps them all.

  Returns the reason the parent stopped them ("timeout", "output_limit") or "".
  """
  main = children[-1]
  reason = ""
  pidfds = []
  for c in children:
    try:
      pidfds.append(os.pidfd_open(c.proc.pid))
    except (AttributeError, OSError):
      pass
  try:
    while True:
      for c in children:
        c.drain(lim.file_bytes)
      if main.exited():
        break
      remaining = lim.wall_s - (time.monotonic() - start)
      if remaining <= 0:
        reason = "timeout"
        break
      sizes = [os.fstat(fd).st_size for c in children for fd in (c.out_fd, c.err_fd)]
      if max(sizes) > lim.output_bytes or any(c.overflow for c in children):
        reason = "output_limit"
        break
      waits = [c.status_fd for c in children] + pidfds
      select.select(waits, [], [], min(remaining, 0.05))
  finally:
    for c in children:
      _kill_group(c.proc.pid)
    for fd in pidfds:
      os.close(fd)
  for c in children:
    c.reap()
    c.drain(lim.file_bytes)
  return reason


def _status(lim: SandboxLimits, reason: str, child: _Child, kinds: set[str]) -> str:
  returncode = child.proc.returncode
  cpu = child.rusage.ru_utime + child.rusage.ru_stime
  out_size = os.fstat(child.out_fd).st_size
  err_size = os.fstat(child.err_fd).st_size
  if reason:
    return reason
  if "memory" in kinds or returncode == _EXIT_MEMORY:
    return "memory"
  if returncode == -signal.SIGXCPU or (returncode == -signal.SIGKILL and cpu >= lim.cpu_s):
    return "timeout"
  if returncode == _EXIT_OUTPUT or max(out_size, err_size) > lim.output_bytes or child.overflow:
    return "output_limit"
  if returncode == 0:
    return "ok"
  if returncode < 0:
    return "killed"
  return "error"


def run_in_sandbox(job: SandboxJob, *, limits: SandboxLimits | None = None,
                   python: str | None = None, site_packages: bool = False) -> SandboxResult:
  """Runs one job in a fresh sandboxed interpreter and waits for it (at most ``wall_s`` + ~0.1 s).

  Never raises for anything the code does; raises OSError only if the parent cannot create a
  temporary directory or start a process. Everything in the result except the status, times and
  return code is *reported by the program itself* (a case's stdout, ``completed``): it can say
  anything, so compare it with expectations that it never saw, as the code reward does.

  Args:
    job: the program (see :class:`SandboxJob`).
    limits: used when ``job.limits`` is None; default ``SandboxLimits()``.
    python: interpreter path (default ``sys.executable``).
    site_packages: run without ``-S`` so that installed packages are importable.
  Returns:
    A :class:`SandboxResult`.
  """
  lim = job.limits or limits or SandboxLimits()
  root = tempfile.mkdtemp(prefix="jaxrl-sandbox-")
  child = None
  try:
    work = os.path.join(root, "work")
    os.mkdir(work, 0o700)
    spec = {"mode": "script" if job.cases is None else "cases", "code": job.code,
            "setup": job.setup, "stdin": job.stdin,
            "cases": None if job.cases is None else list(job.cases)}
    start = time.monotonic()
    child = _Child(root, "program", work, spec, lim, python, site_packages)
    reason = _wait([child], lim, start)
    wall = time.monotonic() - start
    records = child.records()
    kinds = {kind for kind, _ in records}
    status = _status(lim, reason, child, kinds)
    cases = None
    if job.cases is not None:
      cases = []
      for kind, p in records:
        if kind == "case" and isinstance(p, dict) and p.get("i") == len(cases):
          err = str(p.get("error", "error"))
          cases.append(CaseResult(ok=not err, stdout=str(p.get("out", "")), error=err))
    return SandboxResult(
        status=status, returncode=child.proc.returncode,
        stdout=_read_head(child.out_fd, lim.output_bytes).decode("utf-8", "replace"),
        stderr=_read_tail(child.err_fd, lim.output_bytes).decode("utf-8", "replace"),
        wall_s=wall, cpu_s=child.rusage.ru_utime + child.rusage.ru_stime,
        completed=status == "ok" and "done" in kinds, syntax_error="syntax" in kinds,
        cases=cases, layers=_layers(records))
  finally:
    if child is not None:
      child.close()
    shutil.rmtree(root, ignore_errors=True)


def _layers(records: Sequence[tuple[str, object]]) -> tuple[str, ...]:
  return next((tuple(p) for k, p in records if k == "layers" and isinstance(p, list)), ())


@dataclasses.dataclass(frozen=True)
class JudgedJob:
  """A solution and the tests that judge it, for :func:`run_judged`.

  Attributes:
    code: the untrusted solution (Python source), run in the sandboxed *solution* process.
    tests: test snippets (trusted dataset code: asserts, a ``check`` function and its call), run
      one after another in the *judge* process, each given a verdict of its own.
    setup: trusted source run first in both processes (imports, helpers).
    names: the names the tests take from the solution (see :func:`solution_names`); each is bound
      in the judge to what the solution defines under it.
    modules: standard-library modules the tests use without importing them; the judge imports
      its own copies (a module of the solution's could have been patched).
    limits: per-job limits (each process gets them); None = the runner's default.
  """

  code: str
  tests: tuple[str, ...]
  setup: str = ""
  names: tuple[str, ...] = ()
  modules: tuple[str, ...] = ()
  limits: SandboxLimits | None = None


@dataclasses.dataclass
class JudgedResult:
  """Outcome of :func:`run_judged`.

  Attributes:
    verdicts: per test, True (passed) / False (failed) as decided by the judge, or None where the
      run ended (time-out, a limit, a crash) before the judge reached that test.
    errors: per test, the judge's failure text ("" when passed or not reached).
    status: the sandbox status of the solution process, or of the run ("timeout" /
      "output_limit" when the parent stopped it).
    syntax_error: the solution did not compile; nothing ran.
    stderr: the last ``output_bytes`` bytes of the solution's stderr.
    wall_s: wall-clock seconds of the run; cpu_s: CPU seconds of the solution process.
    layers: the isolation layers that took effect in the solution process.
  """

  verdicts: list[bool | None]
  errors: list[str]
  status: str
  syntax_error: bool = False
  stderr: str = ""
  wall_s: float = 0.0
  cpu_s: float = 0.0
  layers: tuple[str, ...] = ()

  @property
  def all_passed(self) -> bool:
    """Every test was reached and passed."""
    return bool(self.verdicts) and all(v is True for v in self.verdicts)


def run_judged(job: JudgedJob, *, limits: SandboxLimits | None = None, python: str | None = None,
               site_packages: bool = False) -> JudgedResult:
  """Judges an untrusted solution with trusted tests in two sandboxed processes.

  The *solution process* runs ``setup`` and ``code``, then answers requests from the judge: the
  value bound to a name, a call with arguments, an attribute, an iteration. Plain data (built-in
  values, :mod:`jaxrl_llm.rewards.plain`) goes back as data, anything else as an opaque handle.
  It never receives a test, an expected value or a channel to the parent: its only descriptors
  are the read end of the request pipe, the write end of the reply pipe, its own status pipe
  (diagnostics only) and its stdout/stderr files, all one-directional.

  The *judge process* runs ``setup`` and the tests, with each of ``names`` bound to the
  solution's object (a proxy) or value (rebuilt from plain data). Every comparison and every truth
  value in a test is computed by built-in code on rebuilt values; a proxy has no truth value and
  equals only itself, so an object whose ``__eq__`` always holds never reaches a comparison. The
  judge reports one verdict per test over its own write-only pipe; the parent reads verdicts only
  from there.

  The solution process gets every layer of :func:`run_in_sandbox`; the judge (trusted code on
  plain data) the limits and the audit hook. The run ends when the judge exits, or at ``wall_s``
  (both process groups are killed either way).

  Fast path: when every test is a single ``assert`` that the trusted side can rewrite into a call
  with literal arguments and a check on its return value (``assert f(1, [2]) == 3``, ``!=``,
  ``is None``, ``assert f(x)``, ``assert not f(x)``), no judge process starts: the solution process
  makes the calls and returns their values as plain data, and this process compares them.

  Args:
    job: the :class:`JudgedJob`.
    limits, python, site_packages: as :func:`run_in_sandbox`.
  Returns:
    A :class:`JudgedResult`.
  """
  lim = job.limits or limits or SandboxLimits()
  checks = [_static_checks(t, tuple(job.names)) for t in job.tests]
  if checks and all(c is not None for c in checks):
    return _run_calls(job, checks, lim, python, site_packages)
  root = tempfile.mkdtemp(prefix="jaxrl-judged-")
  children: list[_Child] = []
  pipes: list[int] = []
  try:
    works = []
    for name in ("solution", "judge"):
      works.append(os.path.join(root, name))
      os.mkdir(works[-1], 0o700)
    request_r, request_w = os.pipe2(os.O_CLOEXEC)
    reply_r, reply_w = os.pipe2(os.O_CLOEXEC)
    pipes = [request_r, request_w, reply_r, reply_w]
    start = time.monotonic()
    children.append(_Child(root, "solution", works[0],
                           {"mode": "serve", "code": job.code, "setup": job.setup, "stdin": "",
                            "request_fd": request_r, "reply_fd": reply_w},
                           lim, python, site_packages, extra_fds=(request_r, reply_w)))
    children.append(_Child(root, "judge", works[1],
                           {"mode": "judge", "tests": list(job.tests), "setup": job.setup,
                            "names": list(job.names), "modules": list(job.modules),
                            "request_fd": request_w, "reply_fd": reply_r},
                           lim, python, site_packages, extra_fds=(request_w, reply_r)))
    for fd in pipes:  # only the children hold the pipes now: a dead peer means EOF.
      os.close(fd)
    pipes = []
    reason = _wait(children, lim, start)
    wall = time.monotonic() - start
    solution, judge = children
    s_records = solution.records()
    verdicts: list[bool | None] = [None] * len(job.tests)
    errors = [""] * len(job.tests)
    for kind, p in judge.records():
      if kind == "verdict" and isinstance(p, dict):
        i = p.get("i")
        if isinstance(i, int) and 0 <= i < len(verdicts) and verdicts[i] is None:
          verdicts[i] = p.get("ok") is True
          errors[i] = str(p.get("error", ""))[:300]
    kinds = {k for k, _ in s_records}
    if reason:
      status = reason
    elif judge.proc.returncode not in (0, None) and "memory" not in kinds:
      status = _status(lim, "", judge, {k for k, _ in judge.records()})
    else:
      status = _status(lim, "", solution, kinds)
      if status == "killed" and solution.proc.returncode == -signal.SIGKILL:
        status = "ok"  # killed by the parent after the judge had finished.
    return JudgedResult(
        verdicts=verdicts, errors=errors, status=status, syntax_error="syntax" in kinds,
        stderr=_read_tail(solution.err_fd, lim.output_bytes).decode("utf-8", "replace"),
        wall_s=wall, cpu_s=solution.rusage.ru_utime + solution.rusage.ru_stime,
        layers=_layers(s_records))
  finally:
    for fd in pipes:
      os.close(fd)
    for c in children:
      c.close()
    shutil.rmtree(root, ignore_errors=True)


_STORE = (ast.Store, ast.Del)
_SINGLETONS = {"None": None, "True": True, "False": False}


@functools.lru_cache(maxsize=4096)
def _static_checks(test: str, names: tuple[str, ...]) -> tuple[tuple, ...] | None:
  """``test`` rewritten into (call, check) form, or None when it has another shape.

  Recognised: one ``assert`` statement, or a HumanEval-style program ``def check(candidate):``
  whose body is only such asserts (and ``pass`` / a docstring / ``assert True``), followed by
  ``check(<name>)`` (other top-level statements may only assign literals, e.g. ``METADATA``).
  An assert is ``f(L...) == L``, ``L == f(L...)``, ``!=``, ``f(L...) is None/True/False`` (and
  ``is not``), ``f(L...)`` or ``not f(L...)``, where ``f`` is a name taken from the solution (or
  ``check``'s parameter) and every ``L`` is a literal (:func:`ast.literal_eval`).

  Returns:
    the test's checks, each ``(name, args, kwargs, op, expected)``; the test passes iff all do.
  """
  try:
    tree = ast.parse(test)
  except (SyntaxError, ValueError, RecursionError, MemoryError):
    return None
  body = tree.body
  if len(body) == 1 and isinstance(body[0], ast.Assert):
    one = _static_assert(body[0], names, {})
    return None if one is None else (one,)
  defs = [n for n in body if isinstance(n, ast.FunctionDef)]
  runs = [n for n in body if isinstance(n, ast.Expr) and isinstance(n.value, ast.Call)]
  rest = [n for n in body if n not in defs and n not in runs]
  if len(defs) != 1 or len(runs) != 1 or not all(_literal_assignment(n) for n in rest):
    return None
  fn, run = defs[0], runs[0].value
  if (fn.decorator_list or len(fn.args.args) != 1 or fn.args.vararg or fn.args.kwarg or
      fn.args.kwonlyargs or fn.args.posonlyargs or fn.args.defaults or
      not (isinstance(run.func, ast.Name) and run.func.id == fn.name and len(run.args) == 1 and
           not run.keywords and isinstance(run.args[0], ast.Name) and run.args[0].id in names)):
    return None
  alias = {fn.args.args[0].arg: run.args[0].id}
  checks = []
  for stmt in fn.body:
    if isinstance(stmt, ast.Pass) or (isinstance(stmt, ast.Expr) and
                                      isinstance(stmt.value, ast.Constant)):
      continue
    if (isinstance(stmt, ast.Assert) and isinstance(stmt.test, ast.Constant) and
        stmt.test.value is True):
      continue
    one = _static_assert(stmt, names, alias) if isinstance(stmt, ast.Assert) else None
    if one is None:
      return None
    checks.append(one)
  return tuple(checks) or None


def _literal_assignment(node: ast.stmt) -> bool:
  if not (isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets)):
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)  # a docstring.
  try:
    ast.literal_eval(node.value)
    return True
  except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
    return False


def _static_assert(stmt: ast.Assert, names: tuple[str, ...],
                   alias: dict[str, str]) -> tuple | None:
  """One rewritable assert as ``(name, args, kwargs, op, expected)``, else None."""
  node = stmt.test

  def call(n):
    if not (isinstance(n, ast.Call) and isinstance(n.func, ast.Name)):
      return None
    name = alias.get(n.func.id, n.func.id)
    if name not in names:
      return None
    if any(isinstance(a, ast.Starred) for a in n.args) or any(k.arg is None for k in n.keywords):
      return None
    try:
      args = tuple(ast.literal_eval(a) for a in n.args)
      kwargs = tuple((k.arg, ast.literal_eval(k.value)) for k in n.keywords)
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
      return None
    return name, args, kwargs

  def literal(n):
    try:
      return True, ast.literal_eval(n)
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
      return False, None

  if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
    c = call(node.operand)
    return None if c is None else (*c, "falsy", None)
  if isinstance(node, ast.Compare) and len(node.ops) == 1:
    left, op, right = node.left, node.ops[0], node.comparators[0]
    if isinstance(op, (ast.Eq, ast.NotEq)):
      c, (ok, value) = call(left), literal(right)
      if c is None:
        c, (ok, value) = call(right), literal(left)
      if c is None or not ok:
        return None
      return (*c, "eq" if isinstance(op, ast.Eq) else "ne", value)
    if isinstance(op, (ast.Is, ast.IsNot)):
      c = call(left)
      if c is None or not (isinstance(right, ast.Constant) and repr(right.value) in _SINGLETONS):
        return None
      return (*c, "is" if isinstance(op, ast.Is) else "is_not", right.value)
    return None
  c = call(node)
  return None if c is None else (*c, "truthy", None)


def _check_passes(op: str, value: object, expected: object) -> bool:
  """The verdict of a rewritten test, on a value rebuilt by :func:`plain.decode_plain`."""
  if op == "eq":
    return bool(value == expected)
  if op == "ne":
    return bool(value != expected)
  if op == "is":
    return value is expected
  if op == "is_not":
    return value is not expected
  return bool(value) if op == "truthy" else not value


def _run_calls(job: JudgedJob, checks: Sequence[Sequence[tuple]], lim: SandboxLimits,
               python: str | None, site_packages: bool) -> JudgedResult:
  """:func:`run_judged` for tests that were all rewritten into calls: one sandboxed process
  returns the calls' values as plain data; this (trusted) process rebuilds and compares them.
  ``checks[j]`` are test ``j``'s checks (it passes iff all do)."""
  flat = [(j, c) for j, test in enumerate(checks) for c in test]
  root = tempfile.mkdtemp(prefix="jaxrl-calls-")
  child = None
  try:
    work = os.path.join(root, "work")
    os.mkdir(work, 0o700)
    calls = [[name, [plain.encode_plain(a) for a in args],
              [[k, plain.encode_plain(v)] for k, v in kwargs]]
             for _, (name, args, kwargs, _, _) in flat]
    start = time.monotonic()
    child = _Child(root, "solution", work, {"mode": "calls", "code": job.code,
                                            "setup": job.setup, "stdin": "", "calls": calls},
                   lim, python, site_packages)
    reason = _wait([child], lim, start)
    wall = time.monotonic() - start
    records = child.records()
    outcome: list[bool | None] = [None] * len(flat)
    errors = [""] * len(checks)
    for kind, text in records:
      if kind != "call" or not isinstance(text, str):
        continue
      try:
        reply = json.loads(text)
        k = reply["i"]
        if not (type(k) is int and 0 <= k < len(flat)) or outcome[k] is not None:
          continue
        value = None if "e" in reply else plain.decode_plain(reply["v"])
      except (ValueError, KeyError, TypeError, RecursionError):
        continue  # malformed: that call stays unreached.
      j, (_, _, _, op, expected) = flat[k]
      outcome[k] = "e" not in reply and _check_passes(op, value, expected)
      if not outcome[k] and not errors[j]:
        errors[j] = (str(reply["e"])[:300] if "e" in reply else
                     f"AssertionError: got {_short(value)}")
    verdicts: list[bool | None] = []
    for j in range(len(checks)):
      mine = [o for (t, _), o in zip(flat, outcome) if t == j]
      verdicts.append(False if False in mine else None if None in mine else True)
    kinds = {k for k, _ in records}
    return JudgedResult(
        verdicts=verdicts, errors=errors, status=_status(lim, reason, child, kinds),
        syntax_error="syntax" in kinds,
        stderr=_read_tail(child.err_fd, lim.output_bytes).decode("utf-8", "replace"),
        wall_s=wall, cpu_s=child.rusage.ru_utime + child.rusage.ru_stime,
        layers=_layers(records))
  finally:
    if child is not None:
      child.close()
    shutil.rmtree(root, ignore_errors=True)


def _short(value: object) -> str:
  text = repr(value)
  return text if len(text) <= 80 else text[:77] + "..."


def solution_names(tests: Sequence[str], setup: str = "",
                   entry_point: str | None = None) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """The names trusted tests take from the solution, and the stdlib modules they use unimported.

  A name is taken from the solution when a test reads it, neither the tests nor ``setup`` bind
  it anywhere (assignment, import, ``def``/``class``, parameter, loop or comprehension target,
  ``except ... as``, ``with ... as``, ``global``), and it is not a builtin -- a solution that
  defines ``sorted`` or ``abs`` does not change what the test's ``sorted`` or ``abs`` mean.
  ``entry_point`` (when given) is always taken from the solution. Standard-library module names
  among the rest are imported by the judge itself.

  Args:
    tests, setup: trusted sources (parsed with :mod:`ast`, never run here).
    entry_point: the function under test, if the dataset names it.
  Returns:
    (names, modules), each sorted.
  Raises:
    SyntaxError: a test or the setup does not parse (a dataset error).
  """
  loaded, bound = set(), set()
  for source in list(tests) + [setup]:
    for node in ast.walk(ast.parse(source)):
      if isinstance(node, ast.Name):
        (bound if isinstance(node.ctx, _STORE) else loaded).add(node.id)
      elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        bound.add(node.name)
      elif isinstance(node, ast.arg):
        bound.add(node.arg)
      elif isinstance(node, (ast.Import, ast.ImportFrom)):
        for alias in node.names:
          bound.add((alias.asname or alias.name).split(".")[0])
      elif isinstance(node, ast.ExceptHandler) and node.name:
        bound.add(node.name)
      elif isinstance(node, (ast.Global, ast.Nonlocal)):
        bound.update(node.names)
      elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
        bound.add(node.name)
  free = loaded - bound - set(dir(builtins)) - {"__name__", "__file__", "__builtins__"}
  modules = {n for n in free if n in sys.stdlib_module_names}
  names = (free - modules) | ({entry_point} if entry_point else set())
  return tuple(sorted(names)), tuple(sorted(modules))


class SandboxPool:
  """Runs sandbox jobs concurrently: at most ``max_workers`` children at a time.

  A thread pool whose threads each start one child and wait for it; every job ends within its wall
  limit (plus start-up), so a hung or crashing child never blocks the pool for longer, and the
  pool keeps serving afterwards. Use as a context manager or call :meth:`close`.

  Args:
    max_workers: most children alive at once (default: number of CPUs).
    limits: default limits for jobs without their own.
    python: interpreter path (default ``sys.executable``).
    site_packages: see :func:`run_in_sandbox`.
  """

  def __init__(self, max_workers: int | None = None, *, limits: SandboxLimits | None = None,
               python: str | None = None, site_packages: bool = False):
    if max_workers is None:
      max_workers = os.cpu_count() or 1
    if not isinstance(max_workers, int) or max_workers < 1:
      raise ValueError(f"max_workers must be a positive int, got {max_workers!r}")
    self.max_workers = max_workers
    self.limits = limits or SandboxLimits()
    self.python = python
    self.site_packages = site_packages
    self._executor = concurrent.futures.ThreadPoolExecutor(max_workers,
                                                           thread_name_prefix="jaxrl-sandbox")

  def _run(self, job: SandboxJob | JudgedJob) -> SandboxResult | JudgedResult:
    run = run_judged if isinstance(job, JudgedJob) else run_in_sandbox
    return run(job, limits=self.limits, python=self.python, site_packages=self.site_packages)

  def submit(self, job: SandboxJob | JudgedJob) -> concurrent.futures.Future:
    """Starts ``job`` when a worker is free; the future resolves to its result
    (:class:`SandboxResult`, or :class:`JudgedResult` for a :class:`JudgedJob`)."""
    return self._executor.submit(self._run, job)

  def run_many(self, jobs: Iterable[SandboxJob | JudgedJob]) -> list:
    """Runs all jobs (concurrently, up to ``max_workers``) and returns results in job order."""
    return list(self._executor.map(self._run, list(jobs)))

  def map(self, codes: Iterable[str], *, stdin: str = "",
          limits: SandboxLimits | None = None) -> list[SandboxResult]:
    """Runs each source string as a script-mode job; results in input order."""
    return self.run_many(SandboxJob(code=c, stdin=stdin, limits=limits) for c in codes)

  def close(self) -> None:
    """Waits for running jobs (each bounded by its wall limit) and stops the worker threads."""
    self._executor.shutdown(wait=True)

  def __enter__(self) -> SandboxPool:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
