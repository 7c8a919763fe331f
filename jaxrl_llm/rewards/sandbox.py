"""Run untrusted Python (model-written code) in a bounded child process.

Every job runs in a fresh interpreter, ``sys.executable -I -S -c <bootstrap>``, started with
:class:`subprocess.Popen` (never a fork of the multithreaded JAX parent, and no ``preexec_fn``,
which is unsafe with threads) in a new session, so the whole process group can be killed. The
job (code, stdin, limits) reaches the child over a pipe; a small bootstrap applies the limits and
isolation below, then ``exec``\\ s the code as ``__main__``.

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
   everything ``ctypes``, and ``open``/rename/remove/mkdir/... with a path outside the work
   directory for writing. It gives clean Python errors and covers systems where 2-4 are missing.
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
* Pass/fail reporting is in-process: a result record carries a per-run random nonce that the code
  never sees directly, which defeats ``sys.exit(0)`` / ``os._exit(0)`` before the tests run, but
  code that deliberately walks the harness's frames could find the nonce and forge a pass.
* Only the standard library is importable by default (``-S`` skips ``site``, hence no
  site-packages; the bootstrap restores ``exit``/``quit``, which ``site`` normally defines).
  ``site_packages=True`` runs without ``-S``.
* Without namespaces (e.g. containers that forbid ``unshare``) or on other architectures (no
  seccomp filter), only layers 1, 5 and 6 remain; check ``layers`` if it matters.
* Disk: each file is capped by ``file_bytes`` but the number of files is bounded only by CPU time.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Iterable, Sequence

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
    tests: Python source run afterwards in the same namespace (e.g. assert statements).
      :attr:`SandboxResult.completed` is True only if both ran to their end without exiting.
    stdin: text on the program's standard input (script mode).
    cases: if given, "cases mode": ``code`` runs once per entry, each time in a fresh namespace
      with that entry as stdin, and its stdout is captured per case (:attr:`SandboxResult.cases`);
      ``tests`` and ``stdin`` are ignored.
    limits: per-job limits; None = the runner's default.
  """

  code: str
  tests: str = ""
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
    completed: the code (and ``tests``) ran to their end without ``sys.exit``/``os._exit``.
    syntax_error: the code (or setup/tests) did not compile; nothing ran.
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
    """True for a run that exited with code 0 and completed its code and tests."""
    return self.status == "ok" and self.completed


# The bootstrap the child runs with ``-c``. It reads the job from stdin, applies the limits and
# isolation, then runs the code. Kept free of the nonce in any global the code can see by name.
_BOOTSTRAP = r'''
import builtins, io, json, os, sys, traceback

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

def _audit_hook(work):
  work = os.path.realpath(work)
  own = os.getpid()
  denied = ("subprocess.Popen", "os.system", "os.fork", "os.forkpty", "os.posix_spawn",
            "os.spawn", "os.exec", "os.killpg", "os.startfile", "pty.spawn")
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
      raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "os.kill" and args[0] not in (own, 0):
      raise PermissionError("sandbox: signalling other processes is not allowed")
    if event == "open":
      path, mode, flags = args
      writing = (isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT |
                                                      os.O_TRUNC | os.O_APPEND)) or (
          isinstance(mode, str) and any(c in mode for c in "wax+"))
      if writing and not inside(path):
        raise PermissionError(f"sandbox: writing outside the work directory: {path!r}")
    elif event in path_events:
      for i in path_events[event]:
        if i < len(args) and not inside(args[i]):
          raise PermissionError(f"sandbox: {event} outside the work directory: {args[i]!r}")
  sys.addaudithook(hook)

def _main():
  job = json.loads(sys.stdin.buffer.read().decode("utf-8"))
  status_fd, cap = job["status_fd"], job["limits"]["output_bytes"]
  def report(kind, payload, _nonce=job.pop("nonce")):
    data = (_nonce + "\t" + kind + "\t" + json.dumps(payload) + "\n").encode("utf-8")
    try:
      while data:
        data = data[os.write(status_fd, data):]
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
      traceback.print_exc()
      return f"{type(e).__name__}: {e}"[:300]
  _audit_hook(job["work"])
  report("layers", layers)
  try:
    setup_obj = compile(job["setup"], "<setup>", "exec") if job["setup"] else None
    code_obj = compile(job["code"], "<solution>", "exec")
    tests_obj = compile(job["tests"], "<tests>", "exec") if job["tests"] else None
  except (SyntaxError, ValueError, MemoryError) as e:
    report("syntax", None)
    traceback.print_exception(e)
    os._exit(1)
  if job["cases"] is None:
    stdin_fd(job["stdin"])
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    error = run(setup_obj, namespace) if setup_obj is not None else ""
    if not error:
      error = run(code_obj, namespace)
    if not error and tests_obj is not None:
      error = run(tests_obj, namespace)
    try:
      sys.stdout.flush()
    except OSError:
      os._exit(98)
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
except BaseException:
  traceback.print_exc()
  os._exit(99)
'''


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


def run_in_sandbox(job: SandboxJob, *, limits: SandboxLimits | None = None,
                   python: str | None = None, site_packages: bool = False) -> SandboxResult:
  """Runs one job in a fresh sandboxed interpreter and waits for it (at most ``wall_s`` + ~0.1 s).

  Never raises for anything the code does; raises OSError only if the parent cannot create a
  temporary directory or start a process.

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
  fds: list[int] = []
  try:
    work = os.path.join(root, "work")
    os.mkdir(work, 0o700)
    for name in ("stdout", "stderr", "status"):
      fds.append(os.open(os.path.join(root, name),
                         os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    out_fd, err_fd, status_fd = fds
    nonce = secrets.token_hex(16)
    spec = {"nonce": nonce, "status_fd": status_fd, "work": work, "code": job.code,
            "tests": job.tests, "setup": job.setup, "stdin": job.stdin,
            "cases": None if job.cases is None else list(job.cases),
            "limits": dataclasses.asdict(lim)}
    argv = [python or sys.executable, "-I"] + ([] if site_packages else ["-S"])
    start = time.monotonic()
    proc = subprocess.Popen(argv + ["-c", _BOOTSTRAP], stdin=subprocess.PIPE, stdout=out_fd,
                            stderr=err_fd, pass_fds=(status_fd,), cwd=work, env=_clean_env(work),
                            start_new_session=True, close_fds=True)
    try:
      proc.stdin.write(json.dumps(spec).encode("utf-8"))
    except OSError:  # the child died before reading its job; the status below says why.
      pass
    finally:
      try:
        proc.stdin.close()
      except OSError:
        pass
    reason, status, rusage = _wait(proc, lim, start, (out_fd, err_fd, status_fd))
    wall = time.monotonic() - start
    proc.returncode = returncode = os.waitstatus_to_exitcode(status)
    cpu = rusage.ru_utime + rusage.ru_stime
    return _result(lim, nonce, reason, returncode, wall, cpu, out_fd, err_fd, status_fd,
                   job.cases is not None)
  finally:
    for fd in fds:
      os.close(fd)
    shutil.rmtree(root, ignore_errors=True)


def _kill_group(pid: int) -> None:
  try:
    os.killpg(pid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass


def _wait(proc: subprocess.Popen, lim: SandboxLimits, start: float,
          watched: Sequence[int]) -> tuple[str, int, object]:
  """Waits for the child, killing its group on the wall or output limit. Returns (reason the
  parent killed it or "", wait status, rusage)."""
  pid, reason = proc.pid, ""
  try:
    pidfd = os.pidfd_open(pid)
  except (AttributeError, OSError):
    pidfd = None
  try:
    delay = 0.002
    while True:
      # WNOWAIT leaves the child a zombie so its pid (and group id) cannot be reused before the
      # group is killed below.
      info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
      if info is not None and info.si_pid == pid:
        break
      remaining = lim.wall_s - (time.monotonic() - start)
      if remaining <= 0:
        reason = "timeout"
        break
      sizes = [os.fstat(fd).st_size for fd in watched]
      if max(sizes[:2]) > lim.output_bytes or sizes[2] > lim.file_bytes:
        reason = "output_limit"
        break
      if pidfd is not None:
        select.select([pidfd], [], [], min(remaining, 0.05))
      else:
        time.sleep(min(remaining, delay))
        delay = min(delay * 2, 0.05)
  finally:
    _kill_group(pid)
    if pidfd is not None:
      os.close(pidfd)
  _, status, rusage = os.wait4(pid, 0)
  return reason, status, rusage


def _parse_status(data: bytes, nonce: str) -> list[tuple[str, object]]:
  records = []
  for line in data.decode("utf-8", "replace").splitlines():
    parts = line.split("\t", 2)
    if len(parts) == 3 and secrets.compare_digest(parts[0], nonce):
      try:
        records.append((parts[1], json.loads(parts[2])))
      except ValueError:
        pass
  return records


def _result(lim: SandboxLimits, nonce: str, reason: str, returncode: int, wall: float, cpu: float,
            out_fd: int, err_fd: int, status_fd: int, cases_mode: bool) -> SandboxResult:
  out_size, err_size = os.fstat(out_fd).st_size, os.fstat(err_fd).st_size
  stdout = _read_head(out_fd, lim.output_bytes).decode("utf-8", "replace")
  stderr = _read_tail(err_fd, lim.output_bytes).decode("utf-8", "replace")
  records = _parse_status(_read_head(status_fd, lim.file_bytes), nonce)
  kinds = {kind for kind, _ in records}
  layers = next((tuple(p) for k, p in records if k == "layers" and isinstance(p, list)), ())
  cases = None
  if cases_mode:
    cases = []
    for kind, p in records:
      if kind == "case" and isinstance(p, dict) and p.get("i") == len(cases):
        err = str(p.get("error", "error"))
        cases.append(CaseResult(ok=not err, stdout=str(p.get("out", "")), error=err))
  over = max(out_size, err_size) > lim.output_bytes
  if reason:
    status = reason
  elif "memory" in kinds or returncode == _EXIT_MEMORY:
    status = "memory"
  elif returncode == -signal.SIGXCPU or (returncode == -signal.SIGKILL and cpu >= lim.cpu_s):
    status = "timeout"
  elif returncode == _EXIT_OUTPUT or over:
    status = "output_limit"
  elif returncode == 0:
    status = "ok"
  elif returncode < 0:
    status = "killed"
  else:
    status = "error"
  return SandboxResult(status=status, returncode=returncode, stdout=stdout, stderr=stderr,
                       wall_s=wall, cpu_s=cpu, completed=status == "ok" and "done" in kinds,
                       syntax_error="syntax" in kinds,
                       cases=cases, layers=layers)


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

  def _run(self, job: SandboxJob) -> SandboxResult:
    return run_in_sandbox(job, limits=self.limits, python=self.python,
                          site_packages=self.site_packages)

  def submit(self, job: SandboxJob) -> concurrent.futures.Future:
    """Starts ``job`` when a worker is free; the future resolves to a :class:`SandboxResult`."""
    return self._executor.submit(self._run, job)

  def run_many(self, jobs: Iterable[SandboxJob]) -> list[SandboxResult]:
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
