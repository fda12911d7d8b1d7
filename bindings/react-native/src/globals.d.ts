// The one host global the package uses; React Native and Node both provide it.
declare function setTimeout(callback: () => void, ms?: number): unknown;
