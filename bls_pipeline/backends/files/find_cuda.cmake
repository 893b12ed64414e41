# Included after every project() of a build with TRITON_ENABLE_GPU=OFF: the DALI backend
# still includes cuda_runtime_api.h and links CUDA::cudart, which only the GPU path finds.
if(NOT TARGET CUDA::cudart)
  find_package(CUDAToolkit REQUIRED)
endif()
