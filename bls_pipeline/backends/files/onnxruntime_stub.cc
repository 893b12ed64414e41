// Link-time stand-in for libonnxruntime (soname libonnxruntime.so.1). The backend's only
// entry point into ONNX Runtime is OrtGetApiBase; linking against this file instead of the
// wheel's library records an unversioned reference, which the ONNX Runtime installed at run
// time (any 1.x release) resolves. Never loaded at run time.
struct OrtApiBase;

extern "C" const OrtApiBase* OrtGetApiBase(void) noexcept
{
  return nullptr;
}
