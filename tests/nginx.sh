# SPDX-License-Identifier: BSD-3-Clause
# Sourced by tests/functions.sh and bench/run.sh: nginx on loopback
# serving a directory, for the curl plugin.
#
# nginx_launch WORKDIR ROOT: start nginx (its config, pid and logs in
# WORKDIR) serving the files under ROOT on a free loopback port; sets
# nginx_pid and nginx_url (http://127.0.0.1:PORT).  Returns 1, with
# nginx's own words in WORKDIR/nginx.log, if it does not start.
nginx_launch ()
{
  local dir=$1 root=$2 bin port i
  bin=$(command -v nginx || echo /usr/sbin/nginx)
  [ -x "$bin" ] || return 1
  mkdir -p "$dir"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  cat >"$dir/nginx.conf" <<NGINX_EOF
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  server { listen 127.0.0.1:$port; root $root; }
}
NGINX_EOF
  "$bin" -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" \
    2>"$dir/nginx.log" &
  nginx_pid=$!
  for i in $(seq 500); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $port))" \
      2>/dev/null && break
    kill -0 "$nginx_pid" 2>/dev/null || {
      cat "$dir/error.log" >>"$dir/nginx.log" 2>/dev/null
      return 1
    }
    sleep 0.01
  done
  nginx_url=http://127.0.0.1:$port
}
