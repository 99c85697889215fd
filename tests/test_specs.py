import subprocess
import sys
import textwrap

import pytest

from sharpness import SharpnessError
from sharpness.data import DATASETS, DataSpec, dataset_names
from sharpness.models import MODELS, ModelSpec, model_names
from sharpness.specs import Registry, Spec, as_spec

USER_CODE = """
import json
from os import system  # imported here, defined elsewhere

loads = json.loads


def make(width=4):
    return ("made", width)


class Thing:
    def __init__(self, n=1):
        self.n = n

    @staticmethod
    def build():
        return "built"


CONSTANT = 3
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module of the user's own, importable from a folder on sys.path (as from the current folder)."""
    (tmp_path / "spec_usermod.py").write_text(USER_CODE)
    pkg = tmp_path / "spec_userpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text("def make():\n    return 'pkg'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "spec_usermod"
    for name in ("spec_usermod", "spec_userpkg", "spec_userpkg.nets"):
        sys.modules.pop(name, None)


def test_spec_round_trip_and_aliases():
    s = Spec("mlp", {"widths": [8]})
    assert Spec.from_dict(s.to_dict()) == s and Spec.from_dict({"name": "x"}) == Spec("x", {})
    assert Spec.from_dict({"name": "x", "args": None}).args == {}
    assert DataSpec is Spec and ModelSpec is Spec
    args = {"a": 1}
    s = Spec("x", args)
    args["a"] = 2  # the spec keeps its own copy
    assert s.args == {"a": 1}
    assert as_spec("x", {"b": 2}) == Spec("x", {"b": 2})
    assert as_spec({"name": "x", "args": {"a": 1}}, {"b": 2}) == Spec("x", {"a": 1, "b": 2})
    assert as_spec(Spec("x", {"a": 1})) == Spec("x", {"a": 1})


@pytest.mark.parametrize("bad,message", [
    ([1, 2], "spec must be a dict"),
    ({"args": {}}, "spec must be a dict with 'name'"),
    ({"name": ""}, "'name' must be a non-empty string"),
    ({"name": 3}, "'name' must be a non-empty string .got 3"),
    ({"name": "x", "args": [1]}, r"'args' of 'x' must be a dict .*got \[1\]"),
    ({"name": "x", "args": {1: 2}}, "'args' of 'x' must be a dict with string keys"),
])
def test_malformed_spec(bad, message):
    with pytest.raises(SharpnessError, match=message):
        Spec.from_dict(bad)
    with pytest.raises(SharpnessError, match="must be a name"):
        as_spec(3.5)


def test_registry_register_names_replace():
    reg = Registry("widget")

    @reg.register("b")
    def b():
        return "b"

    def a():
        return "a"

    assert reg.register("a", a) is a and reg.names() == ["a", "b"] and "a" in reg
    assert reg.resolve("b", trusted=False) is b
    reg.register("a", b)  # re-registering replaces
    assert reg.resolve("a", trusted=False) is b
    for bad in ("", "x:y", 3):
        with pytest.raises(SharpnessError, match="widget name must be a non-empty string"):
            reg.register(bad, a)
    with pytest.raises(SharpnessError, match="must be registered with a callable"):
        reg.register("c", 3)
    with pytest.raises(SharpnessError, match="unknown widget 'nope'; known: a, b"):
        reg.resolve("nope", trusted=True)


def test_builtin_registries():
    assert {"mlp", "keskar-f1", "keskar-c1", "resnet20", "mnist1d-cnn"} <= set(model_names())
    assert {"mnist1d", "digits", "gaussian", "mnist", "fashion-mnist", "cifar10"} <= set(dataset_names())
    assert MODELS.kind == "model" and DATASETS.kind == "data set" and DATASETS.option == "data"


def test_trusted_names_are_imported_as_given(user_module):
    reg = Registry("model")
    assert reg.resolve(f"{user_module}:make", trusted=True)(5) == ("made", 5)
    assert reg.resolve(f"{user_module}:Thing.build", trusted=True)() == "built"
    assert reg.resolve("json:loads", trusted=True)("[1]") == [1]
    import os
    assert reg.resolve("os:system", trusted=True) is os.system  # resolved, never called here
    assert reg.resolve("subprocess:run", trusted=True) is subprocess.run
    with pytest.raises(SharpnessError, match="'spec_usermod:CONSTANT' is a int, not a function or class"):
        reg.resolve(f"{user_module}:CONSTANT", trusted=True)


def test_untrusted_names_only_reach_the_users_own_code(user_module):
    reg = Registry("model")
    # Not imported yet: a name read from a file never imports it (see test_fuzz_config for the planted script).
    with pytest.raises(SharpnessError, match=f"module '{user_module}' is not imported by your code"):
        reg.resolve(f"{user_module}:make", trusted=False)
    assert user_module not in sys.modules
    # Imported by the user's own code (their script, --plugin): its functions and classes may be named.
    import importlib
    importlib.import_module(user_module)
    importlib.import_module("spec_userpkg.nets")
    import subprocess as _sub  # noqa: F401 - loaded, and still refused: not the user's code
    assert reg.resolve(f"{user_module}:make", trusted=False)(2) == ("made", 2)
    assert reg.resolve(f"{user_module}:Thing", trusted=False)(n=4).n == 4
    assert reg.resolve("spec_userpkg.nets:make", trusted=False)() == "pkg"
    for name, why in [("os:system", "'os' is a module built into Python"),
                      ("subprocess:run", "'subprocess' is the standard library"),
                      ("json:loads", "'json' is the standard library"),
                      ("torch.hub:load", "'torch' is an installed package"),
                      ("sharpness.models:mlp", "part of this toolkit"),
                      (f"{user_module}:system", "'system' is not a function or class defined in"),
                      (f"{user_module}:loads", "'loads' is not a function or class defined in"),
                      (f"{user_module}:CONSTANT", "'CONSTANT' is not a function or class defined in")]:
        with pytest.raises(SharpnessError, match=why) as info:
            reg.resolve(name, trusted=False)
        assert str(info.value).startswith("refused: model '") and f"--model {name} / model='{name}'" in \
            str(info.value) and "--trust-code" in str(info.value), name


def test_untrusted_names_are_judged_before_import(capsys):
    # `this` prints the Zen of Python when imported: a refused name must not get that far.
    sys.modules.pop("this", None)
    with pytest.raises(SharpnessError, match="refused"):
        Registry("model").resolve("this:d", trusted=False)
    assert "this" not in sys.modules and capsys.readouterr().out == ""


@pytest.mark.parametrize("name,message", [
    ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz' for model 'no_such_module_xyz:f' "
                             r"\(.*\); run from the folder that holds it"),
    ("./nets.py:f", "is not 'pkg.module:attr'"),
    ("/tmp/nets:f", "is not 'pkg.module:attr'"),
    ("json:", "is not 'pkg.module:attr'"),
])
def test_bad_import_names(name, message):
    for trusted in (True, False):
        # named by a file, a module nobody imported is refused before any import is tried
        expected = message if trusted or "pkg.module" in message else "not imported on the file's say-so"
        with pytest.raises(SharpnessError, match=expected):
            Registry("model").resolve(name, trusted=trusted)


def test_missing_attribute(user_module):
    import importlib
    importlib.import_module(user_module)
    for name, trusted in [("json:nothing_here", True), (f"{user_module}:nothing_here", False)]:
        with pytest.raises(SharpnessError, match=f"module '{name.split(':')[0]}' has no 'nothing_here'"):
            Registry("model").resolve(name, trusted=trusted)


def test_module_whose_import_fails_is_one_line_error(tmp_path, monkeypatch):
    (tmp_path / "spec_broken.py").write_text("raise ValueError('boom\\nsecond line')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(SharpnessError, match="importing module 'spec_broken' .* ValueError: boom$"):
            Registry("model").resolve("spec_broken:f", trusted=True)
    finally:
        sys.modules.pop("spec_broken", None)


def test_user_code_in_the_current_folder_from_a_real_process(tmp_path):
    # What a user does: mynets.py next to where they run python; a checkpoint names it. Not imported on the
    # file's say-so; imported once the user's code imported it, or under the opt-in.
    (tmp_path / "mynets.py").write_text("open('imported', 'a').write('x')\ndef make_net():\n    return 'ok'\n")
    script = textwrap.dedent("""
        import os, sys
        from sharpness.specs import Registry, trust_code
        r = Registry("model")
        for step in ("file", "opt-in", "loaded"):
            try:
                if step == "opt-in":
                    with trust_code():
                        print(r.resolve("mynets:make_net", trusted=False)())
                else:
                    print(r.resolve("mynets:make_net", trusted=False)())
            except Exception as e:
                print(type(e).__name__)
            if step == "file":
                print(os.path.exists("imported"))
        try:
            r.resolve("os:system", trusted=False)
        except Exception as e:
            print(type(e).__name__)
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert out.stdout.split() == ["SharpnessError", "False", "ok", "ok", "SharpnessError"], out.stderr
    env = {**__import__("os").environ, "SHARPNESS_TRUST_CODE": "1"}
    out = subprocess.run([sys.executable, "-c", "from sharpness.specs import Registry\n"
                          "print(Registry('model').resolve('mynets:make_net', trusted=False)())"],
                         cwd=tmp_path, capture_output=True, text=True, env=env)
    assert out.stdout.split() == ["ok"], out.stderr


def test_trust_code_scopes_and_describe(user_module, monkeypatch):
    from sharpness.specs import code_trusted, trust_code

    monkeypatch.delenv("SHARPNESS_TRUST_CODE", raising=False)
    reg = Registry("model")
    assert not code_trusted("x") and reg.describe("mlp") == "not imported: not a registered name nor 'pkg.module:attr'"
    assert reg.describe(f"{user_module}:make").startswith("not imported: module 'spec_usermod' is not imported")
    assert user_module not in sys.modules  # describe imports nothing
    with trust_code([user_module]):
        assert code_trusted(user_module) and code_trusted(f"{user_module}.sub") and not code_trusted("other")
        assert reg.describe(f"{user_module}:make").startswith("allowed: --trust-code")
    assert not code_trusted(user_module)
    with trust_code(False):
        assert not code_trusted(user_module)
    monkeypatch.setenv("SHARPNESS_TRUST_CODE", "spec_userpkg, other")
    assert code_trusted("spec_userpkg.nets") and not code_trusted(user_module)
    monkeypatch.setenv("SHARPNESS_TRUST_CODE", "0")
    assert not code_trusted("spec_userpkg")
