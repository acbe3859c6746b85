"""What the program of a `.pt2` (`models/model.json`) may say, checked before torch reads it.

torch.export.load rebuilds the program from that JSON, and much of it becomes Python: torch.fx
writes the graph as the source of a `forward` function and executes it. Node, tensor and
input names become the names of variables and arguments, attribute names (parameters,
buffers, subgraphs) become `self.<name>` chains, a node's target is looked up by name in
torch, math and operator; a subgraph is registered under its name; shape expressions go to
sympy, which evaluates them; the indices of some symbol names size a loop.

So the JSON is walked with torch's own schema (torch._export.serde.schema), field by field,
and what is not allowed is refused (default deny):
- a key the schema does not have, or a value of another type;
- of each union (an argument, an input or output of the signature, a symbolic size), any kind
  but those an export of an image classifier holds (KINDS): no subgraphs, operators as values,
  custom objects, tokens; a union torch adds later is refused until it is listed here;
- a string that is not a plain name (NAME: letters, digits, `_`, dots between), except in the
  fields TEXT_FIELDS lists, which torch reads otherwise: a node's target (an ATen operator,
  program_archive.py), a shape expression (sympy constructors only), a string argument (torch
  writes it with repr), the pytree specs (JSON), the torch version, node metadata (comments);
- metadata keys other than those torch writes for such a model, guards, custom objects;
- integers beyond int64, symbols other than torch's size symbols with an index over 99,999,
  and size arguments asking for more than MAX_ELEMENTS elements.
"""

import ast
import dataclasses
import functools
import json
import re
import types
import typing
from enum import IntEnum

from torch._export.serde import schema
from torch._export.serde.union import _Union

# The largest number of elements a tensor argument of the graph may ask for (1 GiB of
# float32): many times any activation of the models this project trains.
MAX_ELEMENTS = 2**28
# The longest shape expression read; those of torch.export are far shorter.
MAX_EXPRESSION = 2000
LARGEST_INT = 2**63 - 1
# Parameters, buffers, modules, nodes, tensors: words, dot-separated (as nn.Module names them).
NAME = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")
# torch's symbols for sizes (s, u: backed and unbacked integers; zf, zuf: floats) with an
# index of at most five digits: torch counts up to the index of an unbacked one at load.
SYMBOL = re.compile(r"(s|u|zf|zuf)[0-9]{1,5}")
# The kinds of each union that an exported classifier holds (torchvision's models included).
KINDS = {
    schema.Argument: {
        "as_none",
        "as_tensor",
        "as_tensors",
        "as_int",
        "as_ints",
        "as_float",
        "as_floats",
        "as_string",
        "as_strings",
        "as_sym_int",
        "as_sym_ints",
        "as_scalar_type",
        "as_memory_format",
        "as_layout",
        "as_device",
        "as_bool",
        "as_bools",
        "as_sym_bool",
        "as_sym_bools",
        "as_optional_tensors",
        "as_sym_float",
        "as_sym_floats",
        "as_optional_tensor",
        "as_complex",
        "as_int_lists",
        "as_float_lists",
    },  # fmt: skip
    schema.InputSpec: {"user_input", "parameter", "buffer", "tensor_constant", "constant_input"},
    schema.OutputSpec: {"user_output", "buffer_mutation"},
    schema.ConstantValue: {"as_none", "as_int", "as_float", "as_string", "as_bool"},
    schema.OptionalTensorArgument: {"as_tensor", "as_none"},
    schema.SymExprHint: {"as_int", "as_bool", "as_float"},
    schema.SymInt: {"as_expr", "as_int"},
    schema.SymFloat: {"as_expr", "as_float"},
    schema.SymBool: {"as_expr", "as_bool"},
    schema.SymIntArgument: {"as_name", "as_int"},
    schema.SymFloatArgument: {"as_name", "as_float"},
    schema.SymBoolArgument: {"as_name", "as_bool"},
}
# String fields that are not names, each read by the rule of its own (see _check_string).
TEXT_FIELDS = {
    "Node.target",
    "SymExpr.expr_str",
    "Argument.as_string",
    "Argument.as_strings",
    "ConstantValue.as_string",
    "ModuleCallSignature.in_spec",
    "ModuleCallSignature.out_spec",
    "ExportedProgram.torch_version",
    "Node.metadata",
}
# What torch writes into a node's metadata: kept as text, or shown in comments of the code.
NODE_METADATA = {"stack_trace", "nn_module_stack", "torch_fn", "source_fn_stack"}
# Fields that must be empty: Python to execute, objects to unpickle, types to create.
EMPTY_FIELDS = {
    "ExportedProgram.guards_code",
    "Graph.custom_obj_values",
    "GraphModule.metadata",
    "GraphModule.treespec_namedtuple_fields",
}
# sympy constructors that `sympy.srepr` writes for shape expressions, and torch's own sympy
# functions (torch.utils._sympy.functions); Pow and friends are left out on purpose: an
# exponent in the file could make sympy compute a number without end.
SYMPY_CALLS = frozenset(
    "Symbol Integer Rational Add Mul Max Min Mod Abs Eq Ne Lt Le Gt Ge StrictLessThan "
    "LessThan StrictGreaterThan GreaterThan Equality Unequality And Or Not true false "
    "FloorDiv CeilDiv CleanDiv ModularIndexing PythonMod Where CeilToInt FloorToInt "
    "TruncToInt RoundToInt IntTrueDiv FloatTrueDiv ToFloat TruncToFloat Identity".split()
)
# The containers a model's inputs and outputs are flattened from (pytree's names for them);
# a spec naming another type makes torch import it, an enum in a context its module.
TREE_TYPES = {"builtins.tuple", "builtins.list", "builtins.dict"}
# Control characters other than a newline or a tab: a carriage return ends a line of the
# Python code torch generates, so a comment built from metadata would no longer be one.
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class UnsafeGraph(Exception):
    """What in the program's JSON is not allowed, in words."""


def check_program_json(program: dict, is_allowed_target) -> None:
    """Raise UnsafeGraph unless `program` (the parsed models/model.json) holds only what
    the schema allows, within the rules above; `is_allowed_target(name)` judges node targets."""
    _check(schema.ExportedProgram, program, "ExportedProgram", is_allowed_target)
    for symbol, constraint in program.get("range_constraints", {}).items():
        if not SYMBOL.fullmatch(symbol):
            raise UnsafeGraph(f"its range_constraints name {symbol[:40]!r}, not a size symbol")
        low, high = constraint.get("min_val"), constraint.get("max_val")
        if low is not None and high is not None and low > high:
            raise UnsafeGraph(f"its range of {symbol} is empty")


def _check(kind, value, field: str, is_allowed_target) -> None:
    """`value` is of the schema type `kind`; `field` ("Class.field") names where it is."""
    kind = _resolved(kind)
    origin, arguments = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):  # X | None
        if value is not None:
            (inner,) = [argument for argument in arguments if argument is not type(None)]
            _check(inner, value, field, is_allowed_target)
    elif isinstance(kind, type) and issubclass(kind, _Union):
        name, inner = _union_kind(kind, value)
        _check(_field_types(kind)[name], inner, f"{kind.__name__}.{name}", is_allowed_target)
    elif dataclasses.is_dataclass(kind):
        _check_record(kind, value, is_allowed_target)
    elif origin is list:
        _expect(value, list, field)
        for item in value:
            _check(arguments[0], item, field, is_allowed_target)
        _check_sizes(field, value)
    elif origin is dict:
        _expect(value, dict, field)
        for key, item in value.items():
            _check_key(field, key)
            _check(arguments[1], item, field, is_allowed_target)
    elif kind is str:
        _check_string(field, _expect(value, str, field), is_allowed_target)
    elif kind is bool:
        _expect(value, bool, field)
    elif kind is float:
        if type(value) is int:
            _check_int(int, value, field)
        elif type(value) is not float:
            raise UnsafeGraph(f"its {field} is {_shown(value)}, not a number")
    elif kind is int or (isinstance(kind, type) and issubclass(kind, IntEnum)):
        _check_int(kind, value, field)
    else:
        raise UnsafeGraph(f"its {field} is of a kind this check does not know ({kind})")


def _check_record(kind, value, is_allowed_target) -> None:
    _expect(value, dict, kind.__name__)
    fields = _field_types(kind)
    for key, item in value.items():
        field = f"{kind.__name__}.{key}"
        if key not in fields:
            raise UnsafeGraph(f"it holds {field[:80]}, which torch's schema does not have")
        if field in EMPTY_FIELDS and item:
            raise UnsafeGraph(f"it holds {field}, which no export of a classifier has")
        _check(fields[key], item, field, is_allowed_target)


def _union_kind(kind, value) -> tuple[str, object]:
    """(the kind, the value) of a union: a JSON object of exactly one allowed key."""
    if not isinstance(value, dict) or len(value) != 1:
        raise UnsafeGraph(f"its {kind.__name__} {_shown(value)} is not one of its kinds")
    (name, inner), allowed = next(iter(value.items())), KINDS.get(kind, set())
    if name not in allowed:
        raise UnsafeGraph(
            f"its {kind.__name__} is of kind {str(name)[:40]}, which an export of a "
            "classifier never holds (subgraphs, operators, custom objects are refused)"
        )
    return name, inner


def _check_string(field: str, text: str, is_allowed_target) -> None:
    if CONTROL.search(text):
        raise UnsafeGraph(f"its {field} holds control characters")
    if field == "Node.target":
        if not is_allowed_target(text):
            raise UnsafeGraph(f"its graph calls {text[:80]}, not a tensor operator")
    elif field == "SymExpr.expr_str":
        _check_expression(text)
    elif field in ("ModuleCallSignature.in_spec", "ModuleCallSignature.out_spec"):
        _check_tree_spec(field, text)
    elif field not in TEXT_FIELDS and not (field == "ModuleCallEntry.fqn" and text == ""):
        if not NAME.fullmatch(text):
            raise UnsafeGraph(f"its {field} {text[:80]!r} is not a plain name")


def _check_key(field: str, key: str) -> None:
    if field == "Node.metadata":
        if key not in NODE_METADATA:
            raise UnsafeGraph(f"its node metadata holds {key[:40]!r}, which torch does not write")
    elif field != "ExportedProgram.range_constraints" and not NAME.fullmatch(key):
        raise UnsafeGraph(f"its {field} names {key[:80]!r}, not a plain name")


def _check_int(kind, value, field: str) -> None:
    if type(value) is not int or abs(value) > LARGEST_INT:
        raise UnsafeGraph(f"its {field} is {_shown(value)}, not a 64-bit integer")
    if kind is not int and value not in set(kind):
        raise UnsafeGraph(f"its {field} is {value}, not one of torch's {kind.__name__} values")


def _check_sizes(field: str, values: list) -> None:
    """A size argument of an operator asks for no more than MAX_ELEMENTS elements."""
    if field == "Argument.as_sym_ints":
        values = [value["as_int"] for value in values if "as_int" in value]
    elif field != "Argument.as_ints":
        return
    if product_exceeds([abs(number) for number in values], MAX_ELEMENTS):
        raise UnsafeGraph(f"its graph asks for sizes {values[:8]}, beyond any model's")


def product_exceeds(numbers: list[int], limit: int) -> bool:
    """Whether the product of `numbers` (none negative) is over `limit`, found without
    computing a product of any size: math.prod of the 200,000 sizes of 2**62 that a few
    megabytes of JSON can list takes minutes."""
    if 0 in numbers:
        return False
    product = 1
    for number in numbers:
        product *= number
        if product > limit:
            return True
    return False


def _check_tree_spec(field: str, text: str) -> None:
    """A pytree spec as torch writes it: `[protocol, node]`, each node a leaf or a tuple,
    list or dict of nodes, whose context is null or the list of the dict's keys (names:
    they become keyword arguments of the program's `forward`)."""
    try:
        _, root = json.loads(text)
    except (ValueError, TypeError):
        raise UnsafeGraph(f"its {field} is not a spec of inputs or outputs") from None
    pending = [root]
    while pending:
        node = pending.pop()
        if not isinstance(node, dict) or set(node) != {"type", "context", "children_spec"}:
            raise UnsafeGraph(f"its {field} holds {_shown(node)}, not a node of a spec")
        children, kind = node["children_spec"], node["type"]
        if kind is not None and (not isinstance(kind, str) or kind not in TREE_TYPES):
            raise UnsafeGraph(
                f"its {field} holds the type {_shown(kind)}, not a tuple, list or dict"
            )
        if not isinstance(children, list):
            raise UnsafeGraph(f"its {field} holds the children {_shown(children)}, not a list")
        context = _spec_context(field, node["context"]) if kind is not None else node["context"]
        if context is not None and (
            not isinstance(context, list)
            or not all(isinstance(key, str) and NAME.fullmatch(key) for key in context)
        ):
            raise UnsafeGraph(f"its {field} holds the context {_shown(context)}, not names")
        pending.extend(children)


def _spec_context(field: str, text):
    if not isinstance(text, str):
        raise UnsafeGraph(f"its {field} holds the context {_shown(text)}, not JSON text")
    try:
        return json.loads(text)
    except ValueError:
        raise UnsafeGraph(f"its {field} holds the context {_shown(text)}, not JSON") from None


def _check_expression(text: str) -> None:
    """A shape expression as `sympy.srepr` writes it: calls of SYMPY_CALLS on integers,
    size symbols in quotes and `assumption=True`; sympy evaluates it as Python."""
    if len(text) > MAX_EXPRESSION:
        raise UnsafeGraph(f"its shape expression is {len(text)} characters long")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise UnsafeGraph(f"its shape expression {text[:80]!r} is not one") from None
    for node in ast.walk(tree):
        if not _is_plain_expression_node(node):
            raise UnsafeGraph(f"its shape expression {text[:80]!r} holds more than sizes")


def _is_plain_expression_node(node: ast.AST) -> bool:
    if isinstance(node, ast.Call):
        return isinstance(node.func, ast.Name) and node.func.id in SYMPY_CALLS
    if isinstance(node, ast.Name):
        return node.id in SYMPY_CALLS and isinstance(node.ctx, ast.Load)
    if isinstance(node, ast.keyword):
        return node.arg is not None and isinstance(node.value, ast.Constant)
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, str):
            return SYMBOL.fullmatch(value) is not None
        return isinstance(value, (bool, int)) and abs(value) <= LARGEST_INT
    if isinstance(node, ast.UnaryOp):
        return isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant)
    return isinstance(node, (ast.Expression, ast.Load, ast.USub))


def _resolved(kind):
    """A schema type as torch's reader resolves it: annotations dropped, names looked up."""
    if isinstance(kind, typing.ForwardRef):
        kind = kind.__forward_arg__
    if isinstance(kind, str):
        kind = getattr(schema, kind)
    if typing.get_origin(kind) is typing.Annotated:
        return _resolved(typing.get_args(kind)[0])
    return kind


@functools.cache  # the schema is fixed: its types are looked up once
def _field_types(kind) -> dict:
    return typing.get_type_hints(kind, globalns=vars(schema))


def _expect(value, kind: type, field: str):
    if type(value) is not kind:
        raise UnsafeGraph(f"its {field} is {_shown(value)}, not a {kind.__name__}")
    return value


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
