"""What metadata Linux will give which kind of inode: the one copy of the rules.

A tree may only record metadata that the kernel applies as recorded when the tree is
checked out, unpacked or deployed; otherwise a commit or a signed pack is accepted and
every later deploy fails half-way, or shows other metadata than the signed one.  Commit
(``store.builder``) and pack reading (``pack.manifest``) both ask ``meta_problem``, so the
two agree.  The rules, from Linux's ``fs/open.c``, ``fs/xattr.c`` and ``fs/posix_acl.c``:

- an owner or group id is not 4294967295 ((uid_t)-1): chown(2) takes it as "leave
  unchanged", so no inode can be given it;

- a name is ``<namespace>.<rest>`` with namespace ``security``, ``system``, ``trusted`` or
  ``user`` and a non-empty rest (``xattr_resolve_name``: EOPNOTSUPP / EINVAL otherwise);
- ``user.*`` only on regular files and directories (``xattr_permission``: EPERM on a
  symlink);
- ``security.capability`` holds a file capability set as ``cap_convert_nscap``
  accepts it: a little-endian u32 ``magic_etc`` then the sets, exactly 20 bytes for
  revision 2 or 24 for revision 3, whose root id must not be 0 (the kernel stores
  such a revision 3 set as revision 2, so it would read back otherwise);
- ``system.posix_acl_access`` / ``system.posix_acl_default`` hold a POSIX ACL in the
  kernel's xattr format (``posix_acl_from_xattr`` and ``posix_acl_valid``): a u32 version
  2, then one or more 8-byte entries ``tag u16 | perm u16 | id u32`` (little-endian),
  every perm within rwx (0..7), tags in the order USER_OBJ, USER..., GROUP_OBJ,
  GROUP..., MASK, OTHER, each of USER_OBJ, GROUP_OBJ, OTHER exactly once, a MASK
  required when a named USER or GROUP entry is present, a named entry's id not -1;
  a default ACL only on a directory, no ACL on a symlink (EOPNOTSUPP / EACCES /
  EINVAL otherwise).  A header with no entries is refused too: the kernel takes it
  as "remove the ACL", so what is checked out would differ from the tree.

The function returns a problem (a phrase without the path) or None; each caller turns
it into its own error class naming the path.
"""

from __future__ import annotations

import struct

from .model import Kind, Meta
from .names import show

NAMESPACES = (b"security", b"system", b"trusted", b"user")
ACL_ACCESS = b"system.posix_acl_access"
ACL_DEFAULT = b"system.posix_acl_default"
CAPABILITY = b"security.capability"
_CAP_REVISION_MASK = 0xFF000000
_CAP_SIZES = {0x02000000: 20, 0x03000000: 24}  # VFS_CAP_REVISION_2/3 -> XATTR_CAPS_SZ_2/3

ACL_VERSION = 2
ACL_USER_OBJ = 0x01
ACL_USER = 0x02
ACL_GROUP_OBJ = 0x04
ACL_GROUP = 0x08
ACL_MASK = 0x10
ACL_OTHER = 0x20
ACL_UNDEFINED_ID = 0xFFFFFFFF
_ACL_PERMS = 0o7

# version
_ACL_HEADER = struct.Struct("<I")
# tag, perm, id
_ACL_ENTRY = struct.Struct("<HHI")

# The kernel's posix_acl_valid as a state machine: state -> tag -> next state.
_START, _USERS, _GROUPS, _AFTER_MASK, _DONE = range(5)
_ACL_STEPS = {
    _START: {ACL_USER_OBJ: _USERS},
    _USERS: {ACL_USER: _USERS, ACL_GROUP_OBJ: _GROUPS},
    _GROUPS: {ACL_GROUP: _GROUPS, ACL_MASK: _AFTER_MASK, ACL_OTHER: _DONE},
    _AFTER_MASK: {ACL_OTHER: _DONE},
    _DONE: {},
}


def capability_problem(value: bytes) -> str | None:
    """Why the kernel would refuse (or rewrite) ``value`` as ``security.capability``, or None."""
    if len(value) < 4:
        return f"a file capability set of {len(value)} bytes is too short for its header"
    magic = int.from_bytes(value[:4], "little")
    size = _CAP_SIZES.get(magic & _CAP_REVISION_MASK)
    if size is None:
        return f"file capability revision {magic >> 24} is not one Linux sets (2 or 3)"
    if len(value) != size:
        return f"a revision {magic >> 24} file capability set is {size} bytes, not {len(value)}"
    if size == 24 and int.from_bytes(value[20:24], "little") == 0:
        return "a revision 3 file capability set with root id 0 is stored as revision 2"
    return None


def acl_problem(value: bytes) -> str | None:
    """Why ``value`` is not a POSIX ACL the kernel accepts as an xattr, or None."""
    if len(value) < _ACL_HEADER.size:
        return f"POSIX ACL of {len(value)} bytes has no version header"
    (version,) = _ACL_HEADER.unpack_from(value)
    if version != ACL_VERSION:
        return f"POSIX ACL version {version}, expected {ACL_VERSION}"
    body = len(value) - _ACL_HEADER.size
    if body % _ACL_ENTRY.size:
        return f"POSIX ACL of {len(value)} bytes is not a header and whole 8-byte entries"
    if not body:
        return "POSIX ACL without entries (the kernel would remove the ACL instead)"
    state = _START
    named = False
    for index in range(body // _ACL_ENTRY.size):
        tag, perm, ident = _ACL_ENTRY.unpack_from(value, _ACL_HEADER.size + index * _ACL_ENTRY.size)
        if perm & ~_ACL_PERMS:
            return f"POSIX ACL entry {index} has permissions {perm:#o} outside rwx"
        following = _ACL_STEPS[state].get(tag)
        if following is None:
            return f"POSIX ACL entry {index} has tag {tag:#x} where the kernel wants another"
        if tag in (ACL_USER, ACL_GROUP):
            if ident == ACL_UNDEFINED_ID:
                return f"POSIX ACL entry {index} names id {ident}, which no user or group has"
            named = True
        if tag == ACL_OTHER and state == _GROUPS and named:
            return "POSIX ACL with named users or groups has no MASK entry"
        state = following
    if state != _DONE:
        return "POSIX ACL lacks one of the USER_OBJ, GROUP_OBJ and OTHER entries"
    return None


def xattr_problem(kind: Kind, name: bytes, value: bytes) -> str | None:
    """Why Linux would refuse xattr ``name`` = ``value`` on an inode of ``kind``, or None.

    Sizes and order of a tree's xattrs are the encoding's business (``store.model``);
    this is what the kernel adds (see the module docstring)."""
    namespace, dot, rest = name.partition(b".")
    if not dot or not rest or namespace not in NAMESPACES or b"\0" in name:
        return (f"xattr name is not in a namespace of "
                f"{', '.join(n.decode() for n in NAMESPACES)} (or has nothing after it)")
    if namespace == b"user" and kind is Kind.SYMLINK:
        return "user.* xattrs cannot be set on a symlink (Linux refuses them: EPERM)"
    if name in (ACL_ACCESS, ACL_DEFAULT):
        if kind is Kind.SYMLINK:
            return "a symlink cannot carry a POSIX ACL"
        if name == ACL_DEFAULT and kind is not Kind.DIR:
            return "only a directory can carry a default POSIX ACL"
        return acl_problem(value)
    if name == CAPABILITY:
        return capability_problem(value)
    return None


def xattrs_problem(kind: Kind, xattrs: tuple[tuple[bytes, bytes], ...]) -> tuple[bytes, str] | None:
    """The first xattr of ``xattrs`` that Linux would refuse on ``kind``, with why; or None."""
    for name, value in xattrs:
        problem = xattr_problem(kind, name, value)
        if problem is not None:
            return name, problem
    return None


NO_ID = 0xFFFFFFFF  # (uid_t)-1: "unchanged" to chown(2)


def meta_problem(kind: Kind, meta: Meta) -> str | None:
    """Why Linux would not give an inode of ``kind`` the metadata ``meta``, or None."""
    for number, what in ((meta.uid, "uid"), (meta.gid, "gid")):
        if number == NO_ID:
            return f"{what} {number} is (uid_t)-1, which chown(2) takes as 'leave unchanged'"
    found = xattrs_problem(kind, meta.xattrs)
    if found is not None:
        name, problem = found
        return f"xattr {show(name)}: {problem}"
    return None
