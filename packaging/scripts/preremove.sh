#!/bin/sh
# osquery-aws-logger preremove (deb prerm / rpm %preun): stop osqueryd autoloading the extension.
#
# Takes the .ext path (every copy of that one line) out of osqueryd's --extensions_autoload file
# and leaves every other line, the file's mode and owner as they were. Only when the package is
# really going away:
#   deb prerm:  "remove" -> take it out; "upgrade <new>", "deconfigure", "failed-upgrade" -> keep
#   rpm %preun: $1 = 0 (erase) -> take it out; $1 >= 1 (an upgrade: the new package is already
#               installed and its %post has run) -> keep
#
# OSQUERY_EXTENSIONS_LOAD overrides the file, as in postinstall.
set -eu

EXT=/opt/osquery-aws-logger/osquery-aws-logger.ext
LOAD=${OSQUERY_EXTENSIONS_LOAD:-/etc/osquery/extensions.load}

case "${1:-}" in
    remove | 0) ;;
    *) exit 0 ;;
esac

# Removing (or purging) keeps the spool: it may hold records not yet delivered. Say so.
echo "osquery-aws-logger: the spool of undelivered records (/var/osquery/aws_logger, or" \
     "custom_aws_logger_spool_dir) is kept; delete it by hand once nothing in it is needed"

[ -f "$LOAD" ] || exit 0
# Edit the file a symlink points at, never replace the link with a file.
if [ -L "$LOAD" ]; then
    LOAD=$(readlink -f "$LOAD")
fi

# osqueryd trims each line, so a copy with spaces around it is the same entry.
KEEP='{ line = $0; gsub(/^[ \t\r]+|[ \t\r]+$/, "", line); if (line != want) print $0 }'
if awk -v want="$EXT" "$KEEP" "$LOAD" | cmp -s - "$LOAD"; then
    exit 0 # not listed: leave the file untouched
fi

# Write the rest beside it and rename over it, so a crash never leaves a half-written file.
TMP=$(mktemp "$LOAD.XXXXXX")
trap 'rm -f "$TMP"' EXIT
awk -v want="$EXT" "$KEEP" "$LOAD" > "$TMP"
chmod --reference="$LOAD" "$TMP"
chown --reference="$LOAD" "$TMP" 2>/dev/null || true
mv -f "$TMP" "$LOAD"
trap - EXIT
echo "osquery-aws-logger: removed $EXT from $LOAD"
exit 0
