#!/bin/bash
# Throwaway PG for profiling: port 55432, db app, role app_user/app_pw, pgbench tables.
set -e
D=/dev/shm/profpg
BIN=$(ls -d /usr/lib/postgresql/*/bin | tail -1)
if [ ! -d $D ]; then
  mkdir -p $D && chown postgres $D
  runuser -u postgres -- $BIN/initdb -D $D/data -A trust -U postgres >/dev/null
  echo "port=55432
listen_addresses='127.0.0.1'
unix_socket_directories='$D'
max_connections=300
fsync=off
synchronous_commit=off
password_encryption='scram-sha-256'" >> $D/data/postgresql.conf
  echo "host all app_user 127.0.0.1/32 scram-sha-256" > $D/data/pg_hba.conf.new
  cat $D/data/pg_hba.conf >> $D/data/pg_hba.conf.new; mv $D/data/pg_hba.conf.new $D/data/pg_hba.conf; chown postgres $D/data/pg_hba.conf
fi
runuser -u postgres -- $BIN/pg_ctl -D $D/data -l $D/log -w start >/dev/null
psql -h $D -p 55432 -U postgres -c "CREATE DATABASE app" 2>/dev/null || true
psql -h $D -p 55432 -U postgres -d app -c "DO \$\$BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname='app_user') THEN CREATE ROLE app_user LOGIN PASSWORD 'app_pw'; END IF; END\$\$" 
pgbench -h $D -p 55432 -U postgres -i -s 5 -q app 2>/dev/null
psql -h $D -p 55432 -U postgres -d app -c "GRANT SELECT, UPDATE, INSERT ON ALL TABLES IN SCHEMA public TO app_user"
