// Autolinking: the Android side is the CMake library of the TurboModule glue
// (android/CMakeLists.txt, built against the codegen output), iOS the podspec.
module.exports = {
  dependency: {
    platforms: {
      android: {
        cmakeListsPath: 'generated/jni/CMakeLists.txt',
      },
      ios: {},
    },
  },
};
