// Lifecycle glue: small adapters the app passes its React Native modules to, so
// that this package depends on neither `AppState` nor `@react-native-community/netinfo`.

import type { NetworkKind, SyncClient, Unsubscribe } from './api';

/** The shape of React Native's `AppState`. */
export type AppStateLike = {
  currentState: string | null | undefined;
  addEventListener(type: 'change', listener: (state: string) => void): { remove(): void };
};

/** The part of a `@react-native-community/netinfo` state this package reads. */
export type NetInfoStateLike = {
  isConnected: boolean | null;
  isInternetReachable?: boolean | null;
  /** 'wifi', 'cellular', 'ethernet', 'none', 'unknown', 'bluetooth', 'vpn', … */
  type?: string;
  details?: { isConnectionExpensive?: boolean } | null;
};

/** The shape of `@react-native-community/netinfo`'s default export. */
export type NetInfoLike = {
  addEventListener(listener: (state: NetInfoStateLike) => void): () => void;
};

/** AppState → foreground: background sync pauses while the app is not `active`. */
export function connectAppState(client: SyncClient, appState: AppStateLike): Unsubscribe {
  const apply = (state: string | null | undefined) => client.setForeground(state === 'active');
  apply(appState.currentState);
  const sub = appState.addEventListener('change', apply);
  return () => sub.remove();
}

/** NetInfo's connection type as a network kind. */
export function networkKind(type: string | undefined): NetworkKind {
  switch (type) {
    case 'wifi':
    case 'cellular':
    case 'ethernet':
      return type;
    case undefined:
    case 'none':
    case 'unknown':
      return 'unknown';
    default:
      return 'other';
  }
}

/**
 * NetInfo → online and network: going online syncs; offline, online writes
 * follow their mode. The connection type and `isConnectionExpensive` become
 * the network hints (NetInfo has no round trip; pass one with
 * `client.setNetwork` if the app measures it).
 */
export function connectNetInfo(client: SyncClient, netInfo: NetInfoLike): Unsubscribe {
  return netInfo.addEventListener((state) => {
    // `isInternetReachable` is null while unknown: trust `isConnected` then.
    const reachable = state.isInternetReachable ?? state.isConnected;
    client.setNetwork({
      kind: networkKind(state.type),
      metered: state.details?.isConnectionExpensive ?? false,
    });
    client.setOnline(reachable !== false);
  });
}
