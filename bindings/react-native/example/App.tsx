// An example app: a Redux store over Ferry, a list screen of tasks, an offline
// toggle. Type-checked in CI (tsc --noEmit, strict); building it needs a React
// Native toolchain (Android NDK or Xcode), which CI does not have.

import React, { useEffect, useMemo, useState } from 'react';
import { AppState, Button, FlatList, Switch, Text, TextInput, View } from 'react-native';
import { Provider, useDispatch, useSelector } from 'react-redux';
import { combineReducers, configureStore } from '@reduxjs/toolkit';

import { Database, SyncClient, connectAppState, logout } from 'react-native-ferry';
import { createFerryRedux } from 'react-native-ferry/redux';

import schema from '../../../examples/tasks.schema.json';
import type { Rows } from './rows';

const db = Database.open('tasks.db', schema);
const client = new SyncClient(db, {
  url: 'https://sync.example.com',
  // A real app asks its auth layer; `refresh` means the last token was refused.
  tokenProvider: async (refresh) => (refresh ? refreshToken() : currentToken()),
  resolver: (_collection, local, server) => ({ ...server.fields, title: local.title ?? '' }),
});

const ferry = createFerryRedux<Rows>({ db, client, collections: ['tasks'], views: [{ collection: 'tasks', query: { limit: 200 } }] });

const store = configureStore({
  reducer: { ferry: combineReducers(ferry.reducer) },
  middleware: (gdm) => gdm().concat(ferry.middleware),
});
type RootState = ReturnType<typeof store.getState>;
type AppDispatch = typeof store.dispatch;

async function currentToken(): Promise<string> {
  return 'alice-dev-token';
}
async function refreshToken(): Promise<string> {
  return 'alice-dev-token';
}

function TaskList() {
  const dispatch = useDispatch<AppDispatch>();
  const tasks = useSelector((s: RootState) => ferry.selectors.all(s, 'tasks'));
  const sync = useSelector((s: RootState) => ferry.selectors.sync(s));
  const [title, setTitle] = useState('');
  const [offline, setOffline] = useState(false);

  useEffect(() => {
    void dispatch(ferry.thunks.hydrate(undefined));
    client.start();
    const stopAppState = connectAppState(client, AppState);
    return () => {
      stopAppState();
      client.stop();
    };
  }, [dispatch]);

  // Typed by the schema: `title` is a string, `done` a boolean.
  const pending = useMemo(() => tasks.filter((t) => t._status === 'pending').length, [tasks]);

  return (
    <View style={{ flex: 1, padding: 16 }}>
      <View style={{ flexDirection: 'row', alignItems: 'center' }}>
        <Text>Offline</Text>
        <Switch
          value={offline}
          onValueChange={(v) => {
            setOffline(v);
            client.setOnline(!v);
          }}
        />
        <Text>
          {sync.status?.phase ?? 'idle'} · {pending} pending · {sync.quarantined} quarantined
        </Text>
      </View>
      <TextInput value={title} onChangeText={setTitle} placeholder="New task" />
      <Button
        title="Add (optimistic)"
        onPress={() => {
          void dispatch(
            ferry.thunks.write({ ops: [{ op: 'create', collection: 'tasks', fields: { title } }], mode: { kind: 'optimistic' } }),
          );
          setTitle('');
        }}
      />
      <FlatList
        data={tasks}
        keyExtractor={(t) => t.id}
        renderItem={({ item }) => (
          <Text onPress={() => void dispatch(ferry.thunks.write({ ops: [{ op: 'update', collection: 'tasks', fields: { id: item.id, done: !item.done } }] }))}>
            {item.done ? '☑' : '☐'} {item.title.trim()} {item._status === 'pending' ? '…' : ''}
          </Text>
        )}
      />
      {sync.lastRollback ? <Text>Rolled back: {sync.lastRollback.error.detail}</Text> : null}
      <Button
        title="Log out"
        onPress={() => {
          ferry.detach();
          void logout(client, db);
        }}
      />
    </View>
  );
}

export default function App() {
  return (
    <Provider store={store}>
      <TaskList />
    </Provider>
  );
}
