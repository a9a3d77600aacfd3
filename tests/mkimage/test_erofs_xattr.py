"""The writer's xattr encoding: which short prefix a name is stored under."""

from __future__ import annotations

from mkimage.erofs.xattr import xattr_split_name


def test_xattr_split_name() -> None:
    assert xattr_split_name(b"user.foo") == (1, b"foo")
    assert xattr_split_name(b"system.posix_acl_access") == (2, b"")
    assert xattr_split_name(b"security.selinux") == (6, b"selinux")
    assert xattr_split_name(b"system.other") is None
