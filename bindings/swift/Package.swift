// swift-tools-version:5.9
// Swift package for the Ferry bindings: the generated Swift sources plus the Rust core
// as an xcframework (built by the commands in README.md; not checked in).
import PackageDescription

let package = Package(
    name: "Ferry",
    platforms: [.iOS(.v15), .macOS(.v12)],
    products: [
        .library(name: "Ferry", targets: ["Ferry"]),
    ],
    targets: [
        // libferry.a per platform + the C module FerryFFI (FerryFFI.h, module.modulemap).
        .binaryTarget(name: "FerryFFI", path: "FerryFFI.xcframework"),
        // generated/Ferry.swift (uniffi; `import FerryFFI`).
        .target(
            name: "Ferry",
            dependencies: ["FerryFFI"],
            path: "generated",
            exclude: ["FerryFFI.h", "FerryFFI.modulemap"],
            sources: ["Ferry.swift"]
        ),
    ]
)
