# Whether a dict-change check sees every kind of module change, on 3.11 (ma_version_tag) and 3.12+ (dict watchers).
# Build per Python:  gcc -shared -fPIC -O2 -I$(python -c "import sysconfig; print(sysconfig.get_paths()['include'])") wt.c -o wt$(python -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
# then: python t.py  (prints the kinds of change the check missed)
import sys, collections, wt
class Base:
    def __init__(self):
        object.__setattr__(self, "training", True)
        self.__dict__["_parameters"] = {}
        self._forward_hooks = collections.OrderedDict()
        self.stride = (1, 1)
    def __setattr__(self, k, v):  # like nn.Module: plain attributes go to __dict__
        object.__setattr__(self, k, v)
class Child(Base): pass
KEEP = []
def fresh():
    m = Child(); KEEP.append(m); wt.reset(); wt.snap([m, m._parameters, m._forward_hooks]); assert wt.unchanged(); return m
cases = {
  "set attr": lambda m: setattr(m, "training", False),
  "set same value": lambda m: setattr(m, "stride", m.stride),
  "new attr": lambda m: setattr(m, "eps", 0.1),
  "del attr": lambda m: delattr(m, "stride"),
  "object.__setattr__": lambda m: object.__setattr__(m, "stride", (2, 2)),
  "__dict__ item": lambda m: m.__dict__.__setitem__("stride", (2, 2)),
  "param dict item": lambda m: m._parameters.__setitem__("w", 1),
  "OrderedDict hook add": lambda m: m._forward_hooks.__setitem__(1, print),
  "OrderedDict pop": lambda m: (m._forward_hooks.__setitem__(1, print), wt.snap([m._forward_hooks]), m._forward_hooks.pop(1)),
  "dict update": lambda m: m.__dict__.update({"a": 1}),
  "dict clear params": lambda m: (m._parameters.__setitem__("w", 1), wt.snap([m._parameters]), m._parameters.clear()),
}
bad = []
for name, f in cases.items():
    m = fresh()
    if name in ("OrderedDict pop", "dict clear params"):
        f(m)
    else:
        f(m)
    ok = not wt.unchanged()
    if not ok: bad.append(name)
# unchanged stays unchanged across reads
m = fresh(); _ = m.training; _ = m.__dict__; getattr(m, "stride"); assert wt.unchanged(), "reads changed it"
print(sys.version.split()[0], "missed:", bad or "none")
