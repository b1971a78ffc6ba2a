"""The exception tree crosses process boundaries (the API's ledger process answers with them)."""

from __future__ import annotations

import pickle
from collections.abc import Iterator

from app import errors


def _tree(cls: type[errors.UnlearndError]) -> Iterator[type[errors.UnlearndError]]:
    yield cls
    for sub in cls.__subclasses__():
        yield from _tree(sub)


def _example(cls: type[errors.UnlearndError]) -> errors.UnlearndError:
    if cls is errors.UnknownNameError:
        return cls("arch", "resnet-9000", ["lenet5", "mlp"])  # type: ignore[call-arg]
    if cls is errors.ForgetSetError:
        return cls("2 ids are not training samples", [7, 9])  # type: ignore[call-arg]
    if issubclass(cls, errors.ServiceError):
        return cls("3 unknown sample ids", unknown_ids=[1, 2, 3])
    return cls("something went wrong")


def test_every_error_survives_pickling_with_its_fields() -> None:
    classes = list(_tree(errors.UnlearndError))
    assert errors.InvalidRequest in classes and errors.UnknownNameError in classes
    for cls in classes:
        e = _example(cls)
        back = pickle.loads(pickle.dumps(e))
        assert type(back) is cls and str(back) == str(e) and vars(back) == vars(e), cls


def test_the_module_docstring_draws_the_whole_tree_with_each_parent() -> None:
    doc = errors.__doc__ or ""
    drawn = doc[doc.index("UnlearndError\n"):]
    for cls in _tree(errors.UnlearndError):
        assert f"{cls.__name__} " in drawn or f"{cls.__name__}\n" in drawn, cls.__name__
        parent = cls.__mro__[1]
        if cls is not errors.UnlearndError and parent is not errors.UnlearndError:  # drawn below its parent
            assert drawn.index(parent.__name__) < drawn.index(cls.__name__), cls.__name__
