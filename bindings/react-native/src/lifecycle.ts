// Lifecycle glue: small adapters the app passes its React Native modules to, so
// that this package depends on neither `AppState` nor `@react-native-community/netinfo`.

import type { SyncClient, Unsubscribe } from './api';

/** The shape of React Native's `AppState`. */
export type AppStateLike = {
  currentState: string | null | undefined;
  addEventListener(type: 'change', listener: (state: string) => void): { remove(): void };
};

/** The shape of `@react-native-community/netinfo`'s default export. */
export type NetInfoLike = {
  addEventListener(listener: (state: { isConnected: boolean | null; isInternetReachable?: boolean | null }) => void): () => void;
};

/** AppState → foreground: background sync pauses while the app is not `active`. */
export function connectAppState(client: SyncClient, appState: AppStateLike): Unsubscribe {
  const apply = (state: string | null | undefined) => client.setForeground(state === 'active');
  apply(appState.currentState);
  const sub = appState.addEventListener('change', apply);
  return () => sub.remove();
}

/** NetInfo → online: going online syncs; offline, online writes follow their mode. */
export function connectNetInfo(client: SyncClient, netInfo: NetInfoLike): Unsubscribe {
  return netInfo.addEventListener((state) => {
    // `isInternetReachable` is null while unknown: trust `isConnected` then.
    const reachable = state.isInternetReachable ?? state.isConnected;
    client.setOnline(reachable !== false);
  });
}
