#include <Python.h>
static PyObject* dicts;  // list of watched dicts
static unsigned long long events = 0, seen = 0;
#if PY_VERSION_HEX >= 0x030C0000
static int wid = -1;
static int cb(PyDict_WatchEvent e, PyObject* d, PyObject* k, PyObject* v) { events++; return 0; }
#endif
static unsigned long long versions[1024]; static int n = 0;
static PyObject* snap(PyObject* self, PyObject* objs) {
  n = 0;
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(objs); ++i) {
    PyObject* o = PyList_GET_ITEM(objs, i);
    PyObject* d;
    if (PyDict_Check(o)) d = o; else { PyObject** p = _PyObject_GetDictPtr(o); d = *p; }
#if PY_VERSION_HEX >= 0x030C0000
    if (PyDict_Watch(wid, d)) return NULL;
#else
    versions[n] = ((PyDictObject*)d)->ma_version_tag;
#endif
    PyList_Append(dicts, d); n++;
  }
  seen = events;
  Py_RETURN_NONE;
}
static PyObject* unchanged(PyObject* self, PyObject* a) {
#if PY_VERSION_HEX >= 0x030C0000
  return PyBool_FromLong(events == seen);
#else
  for (int i = 0; i < n; ++i) if (((PyDictObject*)PyList_GET_ITEM(dicts, i))->ma_version_tag != versions[i]) Py_RETURN_FALSE;
  Py_RETURN_TRUE;
#endif
}
static PyObject* reset(PyObject* self, PyObject* a) { Py_SETREF(dicts, PyList_New(0)); Py_RETURN_NONE; }
static PyMethodDef M[] = {{"snap", snap, METH_O, ""}, {"unchanged", unchanged, METH_NOARGS, ""}, {"reset", reset, METH_NOARGS, ""}, {0}};
static struct PyModuleDef md = {PyModuleDef_HEAD_INIT, "wt", 0, -1, M};
PyMODINIT_FUNC PyInit_wt(void) {
#if PY_VERSION_HEX >= 0x030C0000
  wid = PyDict_AddWatcher(cb);
#endif
  dicts = PyList_New(0);
  return PyModule_Create(&md);
}
