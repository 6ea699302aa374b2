"""The role table covers every RPC, and agrees with the access rules the gateway reads."""

from __future__ import annotations

import pytest
from google.api import annotations_pb2 as http_annotations

from aias.api.v1 import annotations_pb2 as access_pb2
from aias.core import authz
from aias.core.authz import RULES, Rule
from aias.gateway.backends import BACKENDS


def _methods() -> list[tuple[str, bool, int]]:
    """(full method path, has an HTTP route, access option) of every RPC.

    An admission RPC is asked on its route's behalf, so it counts as routed with its access.
    """
    found = []
    for spec in BACKENDS:
        for service in spec.file.services_by_name.values():
            admitted = {
                method.GetOptions().Extensions[access_pb2.admission]: method
                for method in service.methods
            }
            for method in service.methods:
                routed = admitted.get(method.name, method)
                options = routed.GetOptions()
                found.append(
                    (
                        f"/{service.full_name}/{method.name}",
                        options.HasExtension(http_annotations.http),
                        int(options.Extensions[access_pb2.access]),
                    )
                )
    return found


def test_every_rpc_has_a_rule_and_every_rule_an_rpc() -> None:
    methods = {path for path, _, _ in _methods()}
    assert set(RULES) == methods


@pytest.mark.parametrize(("path", "routed", "access"), _methods())
def test_rules_agree_with_the_access_annotations(path: str, routed: bool, access: int) -> None:
    rule = RULES[path]
    if not routed:
        assert rule == Rule.INTERNAL, f"{path} has no HTTP route, so only services call it"
    elif access == access_pb2.ACCESS_PUBLIC:
        assert rule == Rule.PUBLIC
    elif access == access_pb2.ACCESS_OPERATOR:
        assert rule == Rule.OPERATOR
    else:
        assert rule in (Rule.MEMBER, Rule.ADMIN, Rule.OWNER)


@pytest.mark.parametrize(
    ("rule", "role", "allowed"),
    [
        (Rule.ADMIN, "member", False),
        (Rule.ADMIN, "admin", True),
        (Rule.ADMIN, "owner", True),
        (Rule.MEMBER, "member", True),
        (Rule.OPERATOR, "owner", False),
        (Rule.OPERATOR, "operator", True),
        (Rule.MEMBER, "operator", False),
        (Rule.INTERNAL, "owner", False),
        (Rule.INTERNAL, "public", False),
        (Rule.MEMBER, "public", False),
        (Rule.PUBLIC, "public", True),
        (Rule.INTERNAL, "", True),
        (Rule.ADMIN, "root", False),
    ],
)
def test_who_may_call_what(rule: Rule, role: str, allowed: bool) -> None:
    method = next(path for path, r in RULES.items() if r == rule)
    assert (authz.denial(method, role) is None) == allowed
