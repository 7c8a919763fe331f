"""Plain data across a trust boundary: a tagged JSON codec for built-in Python values.

The code sandbox (:mod:`jaxrl_llm.rewards.sandbox`) moves values between the process that runs a
model-written program and the trusted process that judges it. Only *data* may cross: a value is
encoded from exact built-in types (``type(x) is int``, never a subclass, so an object whose
``__eq__`` always holds cannot pass as a number), and decoding builds fresh built-in objects, so
every comparison the judge makes runs built-in code. Anything else becomes an opaque handle (the
judge can call it or read attributes through the sandbox, never compare it or take its truth
value).

Encoding (each value is a two-element JSON list ``[tag, payload]``):

=====  =============================  ======================================
tag    type                           payload
=====  =============================  ======================================
``n``  ``None``                       ``0``
``b``  ``bool``                       ``true`` / ``false``
``i``  ``int``                        decimal string (at most ``MAX_INT_DIGITS``)
``f``  ``float``                      ``repr`` (round-trips; ``nan``/``inf`` included)
``c``  ``complex``                    ``[repr(real), repr(imag)]``
``s``  ``str``                        the string
``y``  ``bytes``                      hex string
``l``  ``list``                       list of encoded items
``t``  ``tuple``                      list of encoded items
``S``  ``set`` / ``F`` ``frozenset``  list of encoded items
``d``  ``dict``                       list of ``[key, value]`` encoded pairs
``O``  ``collections.OrderedDict``    as ``d``
``C``  ``collections.Counter``        as ``d``
``D``  ``collections.defaultdict``    as ``d`` (decoded as a plain ``dict``)
``q``  ``collections.deque``          list of encoded items
``h``  a handle                       integer id (only where the caller allows handles)
=====  =============================  ======================================

Size is bounded on both sides: at most ``max_nodes`` values and ``max_depth`` nesting; a longer
text is rejected by the reader before it is parsed. This file is also sent as source text to the
sandboxed interpreter (which runs without ``site`` and without this package), so it imports only
the standard library (not even ``json``: :func:`dumps_json` / :func:`loads_json` use its C core)
and defines nothing but the codec.
"""

import sys

try:  # The C scanner and string encoder behind ``json``, without ``json``'s import of ``re``
  import _json  # (about a third of a sandboxed interpreter's start-up).
except ImportError:  # pragma: no cover -- CPython always has it.
  _json = None

MAX_DEPTH = 64
MAX_NODES = 200_000
MAX_INT_DIGITS = 4000


class PlainDataError(ValueError):
  """A value is not plain data, or an encoded text is malformed or over a size limit."""


_SEQUENCES = {list: "l", tuple: "t", set: "S", frozenset: "F"}
_COLLECTION_SEQUENCES = {"deque": "q"}
_COLLECTION_MAPPINGS = {"OrderedDict": "O", "Counter": "C", "defaultdict": "D"}


def _collection_tag(t, tags):
  """The tag of ``collections.<name>`` type ``t`` ("" otherwise). ``collections`` is only looked
  up when something has imported it: a value of its types cannot exist before that."""
  module = sys.modules.get("collections")
  if module is None:
    return ""
  for name, tag in tags.items():
    if t is getattr(module, name, None):
      return tag
  return ""


def _limits(max_nodes, max_depth):
  """A checker called once per value visited: raises past ``max_nodes`` values or ``max_depth``."""
  left = [max_nodes]

  def visit(depth):
    left[0] -= 1
    if left[0] < 0:
      raise PlainDataError(f"more than {max_nodes} values")
    if depth > max_depth:
      raise PlainDataError(f"nested deeper than {max_depth}")

  return visit


def encode_plain(value, other=None, *, max_depth=MAX_DEPTH, max_nodes=MAX_NODES):
  """Encodes ``value`` as tagged JSON-able lists (format in the module docstring).

  Args:
    value: any object.
    other: called with a value that is not plain data; returns its encoding (e.g. ``["h", id]``)
      or raises. None: such a value raises :class:`PlainDataError`.
  Returns:
    a JSON-serialisable nested list.
  Raises:
    PlainDataError: a value is not plain data (and ``other`` is None), or a limit is exceeded.
  """
  visit = _limits(max_nodes, max_depth)

  def enc(x, depth):
    visit(depth)
    t = type(x)
    if x is None:
      return ["n", 0]
    if t is bool:
      return ["b", x]
    if t is int:
      if x.bit_length() > MAX_INT_DIGITS * 3.33:
        raise PlainDataError("integer too large")
      return ["i", str(x)]
    if t is float:
      return ["f", repr(x)]
    if t is complex:
      return ["c", [repr(x.real), repr(x.imag)]]
    if t is str:
      return ["s", x]
    if t is bytes:
      return ["y", x.hex()]
    tag = _SEQUENCES.get(t) or _collection_tag(t, _COLLECTION_SEQUENCES)
    if tag:
      return [tag, [enc(v, depth + 1) for v in x]]
    tag = "d" if t is dict else _collection_tag(t, _COLLECTION_MAPPINGS)
    if tag:
      return [tag, [[enc(k, depth + 1), enc(v, depth + 1)] for k, v in dict.items(x)]]
    if other is None:
      raise PlainDataError(f"a value of type {t.__name__} is not plain data")
    return other(x)

  return enc(value, 0)


def decode_plain(data, handle=None, *, max_depth=MAX_DEPTH, max_nodes=MAX_NODES):
  """Builds fresh built-in objects from :func:`encode_plain`'s output.

  Args:
    data: the encoded value (already parsed from JSON).
    handle: called with the integer id of an ``h`` entry; returns the object standing for it.
      None: handles raise :class:`PlainDataError`.
  Returns:
    the value, made only of built-in types (and whatever ``handle`` returns).
  Raises:
    PlainDataError: malformed input or a limit exceeded (never anything else for bad input).
  """
  visit = _limits(max_nodes, max_depth)

  def items(payload, depth):
    if type(payload) is not list:
      raise PlainDataError("malformed sequence")
    return [dec(v, depth + 1) for v in payload]

  def pairs(payload, depth):
    if type(payload) is not list:
      raise PlainDataError("malformed mapping")
    out = []
    for p in payload:
      if type(p) is not list or len(p) != 2:
        raise PlainDataError("malformed mapping entry")
      out.append((dec(p[0], depth + 1), dec(p[1], depth + 1)))
    return out

  def num(text):
    if type(text) is not str or len(text) > 40:
      raise PlainDataError("malformed float")
    return float(text)

  def dec(x, depth):
    visit(depth)
    if type(x) is not list or len(x) != 2 or type(x[0]) is not str:
      raise PlainDataError("malformed value")
    tag, p = x
    try:
      if tag == "n":
        return None
      if tag == "b" and type(p) is bool:
        return p
      if tag == "i" and type(p) is str and 0 < len(p) <= MAX_INT_DIGITS + 1:
        return int(p)
      if tag == "f":
        return num(p)
      if tag == "c" and type(p) is list and len(p) == 2:
        return complex(num(p[0]), num(p[1]))
      if tag == "s" and type(p) is str:
        return p
      if tag == "y" and type(p) is str:
        return bytes.fromhex(p)
      if tag == "l":
        return items(p, depth)
      if tag == "t":
        return tuple(items(p, depth))
      if tag == "S":
        return set(items(p, depth))
      if tag == "F":
        return frozenset(items(p, depth))
      if tag in ("d", "D"):
        return dict(pairs(p, depth))
      if tag in ("q", "O", "C"):
        import collections
        if tag == "q":
          return collections.deque(items(p, depth))
        if tag == "O":
          return collections.OrderedDict(pairs(p, depth))
        return collections.Counter(dict(pairs(p, depth)))
      if tag == "h" and handle is not None and type(p) is int:
        return handle(p)
    except PlainDataError:
      raise
    except (TypeError, ValueError, OverflowError, RecursionError) as e:
      raise PlainDataError(f"malformed {tag!r} value: {type(e).__name__}") from None
    raise PlainDataError(f"malformed value with tag {tag!r}")

  return dec(data, 0)


def dumps_json(obj):
  """Compact JSON text of ``obj`` (dicts with string keys, lists, tuples, strings, ints, finite
  floats, bools, None): what crosses the sandbox's pipes, written without importing ``json``."""
  t = type(obj)
  if t is str:
    return _json.encode_basestring_ascii(obj)
  if obj is None:
    return "null"
  if t is bool:
    return "true" if obj else "false"
  if t is int:
    return str(obj)
  if t is float:
    if obj != obj or obj in (float("inf"), float("-inf")):
      raise PlainDataError("non-finite float in JSON")
    return repr(obj)
  if t in (list, tuple):
    return "[" + ",".join(dumps_json(v) for v in obj) + "]"
  if t is dict:
    parts = []
    for k, v in obj.items():
      if type(k) is not str:
        raise PlainDataError("JSON object keys must be strings")
      parts.append(_json.encode_basestring_ascii(k) + ":" + dumps_json(v))
    return "{" + ",".join(parts) + "}"
  raise PlainDataError(f"a {t.__name__} has no JSON form here")


class _ScanContext:
  strict = True
  object_hook = None
  object_pairs_hook = None
  parse_float = float
  parse_int = int
  memo = {}

  @staticmethod
  def parse_constant(name):
    raise ValueError(f"{name} is not allowed")


_scan = _json.make_scanner(_ScanContext()) if _json is not None else None


def loads_json(text):
  """Parses JSON text (no ``NaN`` / ``Infinity``; nothing after the value but white space).

  Raises:
    PlainDataError: not JSON, or nested too deeply.
  """
  try:
    value, end = _scan(text, 0)
  except (ValueError, StopIteration, RecursionError, TypeError) as e:
    raise PlainDataError(f"not JSON: {type(e).__name__}") from None
  if text[end:].strip():
    raise PlainDataError("not JSON: extra data after the value")
  return value


def dumps_plain(value, other=None):
  """``encode_plain`` then compact JSON text (one line: JSON never emits a raw newline)."""
  return dumps_json(encode_plain(value, other))


def loads_plain(text, handle=None, *, max_chars=1 << 24):
  """Parses JSON text of an encoded value (at most ``max_chars``) and decodes it.

  Raises:
    PlainDataError: too long, not JSON, or malformed.
  """
  if len(text) > max_chars:
    raise PlainDataError(f"encoded value longer than {max_chars} characters")
  return decode_plain(loads_json(text), handle)
