# The example script of py-pf's chapter "Managing state tables", run against
# pfhistory. Only two kinds of lines changed from the chapter: the import line
# (pfhistory's py-pf compatible module instead of py-pf) and the Python 2
# print statements (now print() calls).
#
# On OpenBSD, as root, it reads /dev/pf. Anywhere else, point it at a
# `pfctl -S` state file:  PFHISTORY_PF_DEVICE=states.pf python3 pypf_state_table.py
from pfhistory import pf

from socket import AF_INET
filter = pf.PacketFilter()
for state in filter.get_states():
    nk, sk = state.nk, state.sk
    s = "{}".format(state.nk.addr[1])
    if nk.port[1]:
        s += (":{}" if state.af == AF_INET else "[{}]").format(nk.port[1])
    if (nk.addr[1] != sk.addr[1] or nk.port[1] != sk.port[1]):
        s += " ({}".format(sk.addr[1])
        if sk.port[1]:
            s += (":{})" if state.af == AF_INET else "[{}])").format(sk.port[1])
    s += (" -> " if state.direction == pf.PF_OUT else " <- ")
    s += "{0}".format(nk.addr[0])
    if nk.port[0]:
        s += (":{0}" if state.af == AF_INET else "[{0}]").format(nk.port[0])
    if (nk.addr[0] != sk.addr[0] or nk.port[0] != sk.port[0]):
        s += " ({0}".format(sk.addr[0])
        if sk.port[0]:
            s += (":{0})" if state.af == AF_INET else "[{0}])").format(sk.port[0])
    print("State {0.id:#x} on {0.ifname} ({1})".format(state, s))
    print(" Packets: {0.packets[0]}:{0.packets[1]}".format(state))
    print(" Bytes: {0.bytes[0]}:{0.bytes[1]}".format(state))
    print(" Expires in {0.expire} seconds".format(state))
