// The Python module `mnv3_fast._C`.  Importing it runs the static
// TORCH_LIBRARY_IMPL registrations of the CPU kernels; the op schemas
// themselves are defined once, in Python (mnv3_fast/ops/_library.py), so the
// package works the same with and without this extension.
//
// It also exports:
// * PROGRAM_TABLE: the CPU program's opcodes and activation codes as this
//   binary knows them (tests compare them with the Python source of truth);
// * model_state(model, ...): what the plan cache compares to know whether
//   anything the fold reads changed (see mnv3_fast/plan/cache.py), and
//   state_unchanged(model, snapshot), the cheap re-check it makes on every call;
// * pack_pointwise(weight) and POINTWISE_DTYPES: the CPU program's PWCONV weights, and the dtypes this
//   build and CPU run PWCONV in.
#include <Python.h>
#include <torch/csrc/autograd/python_variable.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <vector>

#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/Exceptions.h>

#include "ops.h"
#include "program_table.h"

namespace {

// A cheap checksum of a buffer: the sum and the xor of its 8-byte words
// (vectorizes to memory speed); position-insensitive, which is fine for
// noticing that values changed.
void checksum(const char* p, size_t n, uint64_t& sum, uint64_t& x) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    sum += w;
    x ^= w;
  }
  uint64_t tail = 0;
  std::memcpy(&tail, p + i, n - i);
  sum += tail;
}

constexpr size_t kWholeBytes = 4096;  // tensors up to this size are read whole (BN statistics, biases)
constexpr int kSamples = 8;           // larger ones: this many 8-byte samples spread over the tensor

inline void mix(uint64_t& h, uint64_t v) {  // (boost's hash_combine)
  h ^= v + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2);
}

// Everything about one tensor that may change what a fold of it gives: its
// identity, version counter, shape, dtype, requires_grad, storage address,
// and, for CPU tensors, its content (whole up to 4 KiB, else kSamples samples).
// The content is what catches writes that bypass the version counter
// (`tensor.data`, fused optimizer kernels).
struct TensorDigest {
  uint64_t h = 0xCBF29CE484222325ull, sum = 0, x = 0;
  bool any_grad = false, cacheable = true;
  bool read_content = true;

  // Returns false (with a Python error set) if `o` is neither a tensor nor None.
  bool add(PyObject* o) {
    mix(h, reinterpret_cast<uintptr_t>(o));
    if (o == Py_None) return true;
    if (!THPVariable_Check(o)) {
      PyErr_Format(PyExc_TypeError, "expected a tensor, got %s", Py_TYPE(o)->tp_name);
      return false;
    }
    const at::Tensor& t = THPVariable_Unpack(o);
    if (t.is_inference()) {  // (no version counter: don't cache)
      cacheable = false;
      return true;
    }
    mix(h, static_cast<uint64_t>(t._version()));
    any_grad = any_grad || t.requires_grad();
    mix(h, t.requires_grad());
    mix(h, static_cast<uint64_t>(t.scalar_type()));
    for (int64_t s : t.sizes()) mix(h, static_cast<uint64_t>(s));
    if (!t.has_storage() || t.numel() == 0) return true;
    mix(h, reinterpret_cast<uintptr_t>(t.const_data_ptr()));
    if (!read_content || !t.device().is_cpu() || !t.is_contiguous()) return true;  // (GPU: would synchronize)
    const char* p = static_cast<const char*>(t.const_data_ptr());
    const size_t bytes = t.numel() * t.element_size();
    if (bytes <= kWholeBytes) {
      checksum(p, bytes, sum, x);
    } else {
      for (int k = 0; k < kSamples; ++k) {
        uint64_t w;
        std::memcpy(&w, p + (bytes - 8) / (kSamples - 1) * k, 8);
        mix(h, w);
      }
    }
    return true;
  }

  uint64_t digest() const {
    uint64_t d = h;
    mix(d, sum);
    mix(d, x);
    return d;
  }
};

// ---------------------------------------------------------------------------
// Has a dict changed?  The module tree lives in dicts (each module's __dict__,
// _parameters, _buffers, _modules, hook dicts), so "nothing in the tree changed"
// is "none of these dicts was modified".  CPython answers that cheaply, but
// differently by version (as torch.compile's guards do):
// * up to 3.11: every dict carries ma_version_tag, a globally unique number that
//   changes on every modification (PEP 509);
// * 3.12: that field is deprecated and no longer versions (PEP 699); dict
//   watchers (PyDict_Watch) call us back on every modification of a watched
//   dict instead, and we count the calls;
// * 3.13 on: an attribute set (`module.training = False`) writes the object's
//   inline values without calling the watchers of its __dict__ (measured on
//   3.13.0), so there is no cheap answer: no snapshot, every call walks.
//
// dict_version(d): its version (up to 3.11; else 0).  watch_dict(d): watch it (3.12; else nothing to do).
// dict_events(): modifications of any watched dict so far (3.12; else 0).  init_dict_watcher(): once, at import.
#if PY_VERSION_HEX >= 0x030D0000
constexpr bool kSnapshots = false, kDictWatchers = false;
uint64_t dict_version(PyObject*) { return 0; }
bool watch_dict(PyObject*) { return true; }
uint64_t dict_events() { return 0; }
bool init_dict_watcher() { return true; }
#elif PY_VERSION_HEX >= 0x030C0000
constexpr bool kSnapshots = true, kDictWatchers = true;
std::atomic<uint64_t> g_dict_events{0};  // modifications of any watched dict, ever
int g_dict_watcher = -1;
int count_dict_event(PyDict_WatchEvent, PyObject*, PyObject*, PyObject*) {
  g_dict_events.fetch_add(1, std::memory_order_relaxed);
  return 0;
}
uint64_t dict_version(PyObject*) { return 0; }
bool watch_dict(PyObject* d) { return PyDict_Watch(g_dict_watcher, d) == 0; }
uint64_t dict_events() { return g_dict_events.load(std::memory_order_relaxed); }
bool init_dict_watcher() { return g_dict_watcher >= 0 || (g_dict_watcher = PyDict_AddWatcher(count_dict_event)) >= 0; }
#else
constexpr bool kSnapshots = true, kDictWatchers = false;
uint64_t dict_version(PyObject* d) { return reinterpret_cast<PyDictObject*>(d)->ma_version_tag; }
bool watch_dict(PyObject*) { return true; }
uint64_t dict_events() { return 0; }
bool init_dict_watcher() { return true; }
#endif

// What one full walk read, so that the next call can tell cheaply whether any
// of it changed (state_unchanged) instead of walking again.  It holds no
// references: the modules and tensors are kept alive by the walk's keep_alive
// list, which the caller holds with it; a dict is read only after the check
// before it has shown that its owner still holds it.
struct Snapshot {
  struct Step {
    PyObject* object;  // a module (check its type and __dict__) or a dict (check its version)
    uintptr_t type;    // module: its type; dict: 0
    uint64_t expected; // module: its __dict__'s address; dict: its version (before 3.12)
  };
  const PyObject* model = nullptr;
  std::vector<Step> steps;  // in walk order: a module, its __dict__, its dicts; then its children
  std::vector<PyObject*> tensors;  // every parameter and buffer (or None), in walk order
  uint64_t tensor_digest = 0;
  uint64_t dict_events = 0;  // dict_events() when the walk ended
  bool read_content = true;

  void add_module(PyObject* m, PyObject* dict) {
    if (!kSnapshots) return;
    steps.push_back({m, reinterpret_cast<uintptr_t>(Py_TYPE(m)), reinterpret_cast<uintptr_t>(dict)});
  }
  bool add_dict(PyObject* d) {  // (3.12: watch it; before: remember its version)
    if (!kSnapshots) return true;
    if (!kDictWatchers) steps.push_back({d, 0, dict_version(d)});
    return watch_dict(d);
  }
};

constexpr const char* kSnapshotName = "mnv3_fast.model_state.snapshot";

void free_snapshot(PyObject* capsule) {
  delete static_cast<Snapshot*>(PyCapsule_GetPointer(capsule, kSnapshotName));
}

// model_state(model, hyperparameters, mode_sensitive, read_content)
//   -> (hash, any requires grad, cacheable, hooked, training, keep_alive, snapshot)
//
// The C++ twin of mnv3_fast.plan.cache.read_state_python (which documents
// what is read, and why): one walk over the module tree through the modules'
// own __dict__s.  `hyperparameters` maps a module class to the names of its
// attributes that the fold reads; `mode_sensitive` holds the classes whose
// output depends on train/eval mode.  hooked/training: the first submodule
// with hooks / the first mode-sensitive one in train mode, or None.  keep_alive: every submodule, parameter and
// buffer, for the caller to hold, so that the identities hashed stay unique.  snapshot: for
// state_unchanged (None where the state is not cacheable, and on Python 3.13+); valid only while keep_alive is held.
PyObject* model_state(PyObject*, PyObject* args) {
  PyObject *model, *hyper, *mode_sensitive;
  int read_content = 1;
  if (!PyArg_ParseTuple(args, "OO!O!|p", &model, &PyDict_Type, &hyper, &PyDict_Type, &mode_sensitive, &read_content))
    return nullptr;
  // Interned once: PyDict_GetItemString would make a string object on every lookup.
  static PyObject* const kTraining = PyUnicode_InternFromString("training");
  static PyObject* const kParameters = PyUnicode_InternFromString("_parameters");
  static PyObject* const kBuffers = PyUnicode_InternFromString("_buffers");
  static PyObject* const kModules = PyUnicode_InternFromString("_modules");
  static PyObject* const kHookDicts[] = {
      PyUnicode_InternFromString("_forward_hooks"), PyUnicode_InternFromString("_forward_pre_hooks"),
      PyUnicode_InternFromString("_backward_hooks"), PyUnicode_InternFromString("_backward_pre_hooks")};
  TensorDigest digest;
  digest.read_content = read_content;
  auto snap = std::make_unique<Snapshot>();
  snap->model = model;
  snap->read_content = read_content;
  uint64_t structure = 0x84222325CBF29CE4ull;
  PyObject *hooked = Py_None, *training = Py_None;
  PyObject* keep = PyList_New(0);
  if (!keep) return nullptr;
  std::vector<PyObject*> stack{model};  // borrowed: every module is held by its parent's _modules
  bool ok = true;
  auto add_dict = [&](PyObject* d) {
    if (ok && !snap->add_dict(d)) ok = false;
  };
  auto add_tensors = [&](PyObject* d, PyObject* name) {
    PyObject* tensors = PyDict_GetItem(d, name);
    if (!tensors || !PyDict_Check(tensors)) return;
    add_dict(tensors);
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (ok && PyDict_Next(tensors, &pos, &key, &value)) {
      ok = digest.add(value) && PyList_Append(keep, value) == 0;
      if (kSnapshots) snap->tensors.push_back(value);
    }
    mix(structure, static_cast<uint64_t>(PyDict_Size(tensors)));
  };
  while (ok && !stack.empty()) {
    PyObject* m = stack.back();
    stack.pop_back();
    if (m == Py_None) {
      mix(structure, 0);
      continue;
    }
    PyObject** dict_ptr = _PyObject_GetDictPtr(m);
    if (!dict_ptr || !*dict_ptr) {
      PyErr_Format(PyExc_TypeError, "model_state: %s has no __dict__", Py_TYPE(m)->tp_name);
      ok = false;
      break;
    }
    PyObject* d = *dict_ptr;
    snap->add_module(m, d);
    add_dict(d);
    // (The model itself stays out of keep_alive: the cache it owns must not keep it alive.)
    if (m != model) {
      mix(structure, reinterpret_cast<uintptr_t>(m));
      if (PyList_Append(keep, m) < 0) ok = false;
    }
    mix(structure, reinterpret_cast<uintptr_t>(Py_TYPE(m)));
    PyObject* is_training = PyDict_GetItem(d, kTraining);
    const bool in_train = is_training == Py_True;
    mix(structure, in_train);
    PyObject* names = PyDict_GetItem(hyper, reinterpret_cast<PyObject*>(Py_TYPE(m)));
    if (names && PyTuple_Check(names)) {
      for (Py_ssize_t i = 0; ok && i < PyTuple_GET_SIZE(names); ++i) {
        PyObject* v = PyDict_GetItem(d, PyTuple_GET_ITEM(names, i));
        const Py_hash_t hv = v ? PyObject_Hash(v) : 0;
        if (hv == -1 && PyErr_Occurred()) ok = false;
        mix(structure, static_cast<uint64_t>(hv));
      }
    }
    add_tensors(d, kParameters);
    add_tensors(d, kBuffers);
    // Every hook dict goes into the snapshot (a hook registered later must be seen), even once one is found.
    for (PyObject* name : kHookDicts) {
      PyObject* hooks = PyDict_GetItem(d, name);
      if (!hooks || !PyDict_Check(hooks)) continue;
      add_dict(hooks);
      if (m != model && hooked == Py_None && PyDict_Size(hooks) > 0) hooked = m;
    }
    if (m != model && training == Py_None && in_train &&
        PyDict_Contains(mode_sensitive, reinterpret_cast<PyObject*>(Py_TYPE(m))) == 1)
      training = m;
    PyObject* children = PyDict_GetItem(d, kModules);
    if (children && PyDict_Check(children)) {  // pushed in reverse: visited in module order
      add_dict(children);
      const size_t first = stack.size();
      PyObject *key, *value;
      Py_ssize_t pos = 0;
      while (PyDict_Next(children, &pos, &key, &value)) stack.push_back(value);
      std::reverse(stack.begin() + first, stack.end());
    }
  }
  if (!ok) {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_RuntimeError, "model_state: could not watch a module's dict");
    Py_DECREF(keep);
    return nullptr;
  }
  uint64_t h = digest.digest();
  mix(h, structure);
  PyObject* capsule = nullptr;
  if (kSnapshots && digest.cacheable) {
    snap->tensor_digest = digest.digest();
    snap->dict_events = dict_events();
    capsule = PyCapsule_New(snap.get(), kSnapshotName, free_snapshot);
    if (!capsule) {
      Py_DECREF(keep);
      return nullptr;
    }
    snap.release();
  } else {
    capsule = Py_None;
    Py_INCREF(Py_None);
  }
  return Py_BuildValue("(KOOOONN)", static_cast<unsigned long long>(h), digest.any_grad ? Py_True : Py_False,
                       digest.cacheable ? Py_True : Py_False, hooked, training, keep, capsule);
}

// state_unchanged(model, snapshot) -> bool: whether nothing model_state read has changed since it took
// `snapshot` (then its answer stands).  Flat loops over what the walk recorded, instead of the walk's
// chain of dict lookups: measured on a 2-vCPU Xeon right after a batch-1 bf16 forward, 75-80 us against
// 180 for the walk (Large), 48-60 against 136 (Small).
// The caller must hold the keep_alive list returned with the snapshot.
PyObject* state_unchanged(PyObject*, PyObject* args) {
  PyObject *model, *capsule;
  if (!PyArg_ParseTuple(args, "OO", &model, &capsule)) return nullptr;
  auto* snap = static_cast<Snapshot*>(PyCapsule_GetPointer(capsule, kSnapshotName));
  if (!snap) return nullptr;
  if (snap->model != model) Py_RETURN_FALSE;
  if (dict_events() != snap->dict_events) Py_RETURN_FALSE;  // (3.12: some watched dict was modified)
  for (const Snapshot::Step& s : snap->steps) {
    if (s.type) {  // a module (alive: keep_alive holds it; the model is the caller's): same type, same __dict__
      PyObject** dict_ptr = _PyObject_GetDictPtr(s.object);
      if (reinterpret_cast<uintptr_t>(Py_TYPE(s.object)) != s.type || !dict_ptr ||
          reinterpret_cast<uintptr_t>(*dict_ptr) != s.expected)
        Py_RETURN_FALSE;
    } else if (dict_version(s.object) != s.expected) {  // (its owner, checked before it, still holds it)
      Py_RETURN_FALSE;
    }
  }
  TensorDigest digest;
  digest.read_content = snap->read_content;
  for (PyObject* t : snap->tensors)
    if (!digest.add(t)) return nullptr;
  return PyBool_FromLong(digest.cacheable && digest.digest() == snap->tensor_digest);
}

// call_key(x, weights_require_grad) -> a tuple of ints: what of the input and of the thread's state the
// choice of a backend depends on (mnv3_fast.backends.call_signature): shape, dtype, device, whether
// autograd must flow (grad mode, and x or a weight requires grad), autocast's dtype for x's device (-1:
// off), torch's thread count.  One call instead of seven Python ones: at batch 1, right after a forward,
// those cost ~40 us.
PyObject* call_key(PyObject*, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject* x;
  int weights_grad = 0;
  if (!PyArg_ParseTuple(args, "Op", &x, &weights_grad)) return nullptr;
  if (!THPVariable_Check(x)) {
    PyErr_Format(PyExc_TypeError, "call_key: expected a tensor, got %s", Py_TYPE(x)->tp_name);
    return nullptr;
  }
  const at::Tensor& t = THPVariable_Unpack(x);
  const c10::Device device = t.device();
  const bool grad = c10::GradMode::is_enabled() && (weights_grad || t.requires_grad());
  const int64_t autocast = at::autocast::is_autocast_enabled(device.type())
                               ? static_cast<int64_t>(at::autocast::get_autocast_dtype(device.type()))
                               : -1;
  const int64_t head[] = {static_cast<int64_t>(t.scalar_type()), static_cast<int64_t>(device.type()), device.index(),
                          grad, autocast, at::get_num_threads(), t.dim()};
  constexpr Py_ssize_t kHead = sizeof(head) / sizeof(head[0]);
  PyObject* key = PyTuple_New(kHead + t.dim());
  if (!key) return nullptr;
  for (Py_ssize_t i = 0; i < kHead; ++i) PyTuple_SET_ITEM(key, i, PyLong_FromLongLong(head[i]));
  for (int64_t d = 0; d < t.dim(); ++d) PyTuple_SET_ITEM(key, kHead + d, PyLong_FromLongLong(t.size(d)));
  return key;
  END_HANDLE_TH_ERRORS
}

PyObject* program_table() {
  PyObject* opcodes = PyTuple_New(mnv3::kNumOpcodes);
  for (int64_t i = 0; i < mnv3::kNumOpcodes; ++i) {
    const auto& op = mnv3::kOpcodes[i];
    PyTuple_SET_ITEM(opcodes, i, Py_BuildValue("(sLL)", op.name, static_cast<long long>(op.num_args),
                                               static_cast<long long>(op.act_arg)));
  }
  PyObject* acts = PyTuple_New(mnv3::kNumActs);
  for (int64_t i = 0; i < mnv3::kNumActs; ++i) PyTuple_SET_ITEM(acts, i, PyUnicode_FromString(mnv3::kActNames[i]));
  PyObject* table = Py_BuildValue("{sNsN}", "opcodes", opcodes, "activations", acts);
  return table;
}

// pack_pointwise(weight) -> the PWCONV instruction's packed weight (ops.h: pack_pointwise_weight).
PyObject* pack_pointwise(PyObject*, PyObject* arg) {
  HANDLE_TH_ERRORS
  if (!THPVariable_Check(arg)) {
    PyErr_Format(PyExc_TypeError, "pack_pointwise: expected a tensor, got %s", Py_TYPE(arg)->tp_name);
    return nullptr;
  }
  return THPVariable_Wrap(mnv3::pack_pointwise_weight(THPVariable_Unpack(arg)));
  END_HANDLE_TH_ERRORS
}

// The dtypes whose 1x1 convs the CPU program runs as PWCONV (int8: QPWCONV) on this build and CPU.
PyObject* pointwise_dtypes() {
  const std::pair<bool, const char*> dtypes[] = {{mnv3::pointwise_supported(at::kFloat), "float32"},
                                                  {mnv3::pointwise_supported(at::kBFloat16), "bfloat16"},
                                                  {mnv3::pointwise_int8_supported(), "int8"}};
  PyObject* names = PyList_New(0);
  for (const auto& [supported, name] : dtypes) {
    if (!supported) continue;
    PyObject* s = PyUnicode_FromString(name);
    PyList_Append(names, s);
    Py_DECREF(s);
  }
  PyObject* t = PyList_AsTuple(names);
  Py_DECREF(names);
  return t;
}

PyMethodDef methods[] = {
    {"pack_pointwise", pack_pointwise, METH_O, "pack_pointwise(weight) -> the PWCONV instruction's packed weight"},
    {"model_state", model_state, METH_VARARGS,
     "model_state(model, hyperparameters, mode_sensitive, read_content=True) -> (hash, any_requires_grad, cacheable, "
     "hooked, training, keep_alive, snapshot)"},
    {"call_key", call_key, METH_VARARGS, "call_key(x, weights_require_grad) -> what the choice of a backend reads of x"},
    {"state_unchanged", state_unchanged, METH_VARARGS,
     "state_unchanged(model, snapshot) -> whether nothing model_state read has changed since"},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef mnv3_module = {PyModuleDef_HEAD_INIT, "_C", "mnv3_fast C++ CPU kernels", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) {
  if (!init_dict_watcher()) return nullptr;
  PyObject* m = PyModule_Create(&mnv3_module);
  if (m && (PyModule_AddObject(m, "PROGRAM_TABLE", program_table()) < 0 ||
            PyModule_AddObject(m, "POINTWISE_DTYPES", pointwise_dtypes()) < 0)) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
