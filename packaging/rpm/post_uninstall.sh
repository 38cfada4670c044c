# volguard %postun: forget the removed units. /var/lib/volguard (the embedded repository)
# and /etc/volguard/repo.key are kept: removing a package never deletes backups.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
