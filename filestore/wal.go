package filestore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
)

// The write-ahead log.
//
// A commit appends one frame holding the batch's changed records to the
// log, a file of fixed size next to the database (Path()+"-wal"), and
// syncs it: one write and one fdatasync, into blocks that already exist
// (the file is written with zeros when it is created), so the sync has no
// file metadata to flush. The changed records are then kept in memory (the
// overlay), where reads find them before the database. When the overlay
// holds walCheckpointRecords records, or the log walCheckpointBytes bytes,
// the commit leader checkpoints: it writes the overlay into the database in
// one bbolt transaction (synced, as every bbolt commit), records there the
// sequence number of the last frame it contains, empties the overlay and
// starts writing the log from its beginning again. A bbolt commit costs two
// syncs and a copy of every B+tree page it touches; through the log, a
// commit costs one sync, and the B+tree work is done once per checkpoint.
//
// Frame layout (integers big-endian):
//
//	length   4 bytes   of the payload
//	crc      4 bytes   CRC-32C of the payload
//	payload:
//	  epoch    8 bytes   the database's log epoch (meta "wal-epoch")
//	  lsn      8 bytes   frame sequence number, the previous frame's + 1
//	  count    8 bytes   records held after the frame (the meta count)
//	  fence    8 bytes   highest fence issued after the frame (the meta fence)
//	  n        uvarint   changes
//	  n × { key length uvarint, key, value length + 1 uvarint (0: deleted), value }
//
// Recovery (Open, only when the last run did not close cleanly) reads
// frames from the start of the file while each one is whole (its CRC
// matches), carries the database's epoch and the next sequence number after
// the checkpoint's: frames left from before the last checkpoint carry lower
// numbers, a frame torn by a crash fails its CRC, and a log left by another
// database (a file deleted and made again, a copy) has another epoch. None of
// those was acknowledged by this database after its last checkpoint. The
// frames read are written into the database as a checkpoint before Open
// returns.

// WAL sizes; variables so that tests can make checkpoints frequent.
var (
	walSize              int64 = 4 << 20 // bytes of the log file
	walCheckpointBytes   int64 = 2 << 20 // checkpoint once the log holds this much
	walCheckpointRecords       = 1024    // or once the overlay holds this many records
)

const (
	frameHead  = 8      // length and CRC
	minPayload = 32 + 1 // epoch, lsn, count, fence and a change count
)

var (
	metaLSN   = []byte("wal-lsn")   // sequence number of the last frame checkpointed, uint64 big-endian
	metaEpoch = []byte("wal-epoch") // random, made with the first log of the file: binds frames to it
)

// fileFormatWAL is the meta format while the log may hold frames the
// database lacks (fileFormat, 1, after a clean Close, when the database
// holds every record), so that a version without the log refuses the file
// instead of missing those records.
const fileFormatWAL = 2

// wal is the log file and the write position.
type wal struct {
	f     *os.File
	off   int64  // where the next frame goes
	lsn   uint64 // sequence number of the last frame written (or checkpointed)
	epoch uint64 // the database's log epoch
	sync  bool
	buf   []byte // frame encoding buffer, reused by the leader
}

// walPath is the log file of the database at path.
func walPath(path string) string { return path + "-wal" }

// openWAL opens the log at path, creating it (full size, zero-filled,
// synced with its directory) when it does not exist. A missing log is an
// error when mustExist is set: the database says the log may hold records.
func openWAL(path string, mustExist, sync bool) (*wal, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		if mustExist {
			return nil, fmt.Errorf("%w: the write-ahead log %s is missing, and the database may depend on it", ErrCorrupt, path)
		}
		f, err = createWAL(path, sync)
	}
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if st.Size() < walSize {
		// Written by a version with a smaller log, or cut short: grow it
		// (with zeros) so that every frame's blocks exist.
		if err := zeroFill(f, st.Size(), walSize); err != nil {
			f.Close()
			return nil, err
		}
		if sync {
			if err := f.Sync(); err != nil {
				f.Close()
				return nil, err
			}
		}
	}
	return &wal{f: f, sync: sync}, nil
}

func createWAL(path string, sync bool) (*os.File, error) {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*os.File, error) {
		f.Close()
		os.Remove(tmp)
		return nil, err
	}
	if err := zeroFill(f, 0, walSize); err != nil {
		return fail(err)
	}
	if sync {
		if err := f.Sync(); err != nil {
			return fail(err)
		}
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(err)
	}
	f.Close()
	if sync {
		if err := syncDir(filepath.Dir(path)); err != nil {
			return nil, err
		}
	}
	return os.OpenFile(path, os.O_RDWR, 0) // named by its final path in errors
}

// zeroFill writes zeros to f from from to to.
func zeroFill(f *os.File, from, to int64) error {
	zeros := make([]byte, 64<<10)
	for off := from; off < to; {
		n := min(int64(len(zeros)), to-off)
		if _, err := f.WriteAt(zeros[:n], off); err != nil {
			return err
		}
		off += n
	}
	return nil
}

// change is one record change of a frame: val nil deletes key.
type change struct {
	key, val []byte
}

// frame is a decoded frame.
type frame struct {
	epoch, lsn, count, fence uint64
	changes                  []change
}

// encodeFrame appends the frame of lsn to b.
func encodeFrame(b []byte, epoch, lsn, count, fence uint64, staged map[string][]byte) []byte {
	start := len(b)
	b = append(b, make([]byte, frameHead)...)
	b = binary.BigEndian.AppendUint64(b, epoch)
	b = binary.BigEndian.AppendUint64(b, lsn)
	b = binary.BigEndian.AppendUint64(b, count)
	b = binary.BigEndian.AppendUint64(b, fence)
	b = binary.AppendUvarint(b, uint64(len(staged)))
	for k, v := range staged {
		b = binary.AppendUvarint(b, uint64(len(k)))
		b = append(b, k...)
		if v == nil {
			b = binary.AppendUvarint(b, 0)
			continue
		}
		b = binary.AppendUvarint(b, uint64(len(v))+1)
		b = append(b, v...)
	}
	payload := b[start+frameHead:]
	binary.BigEndian.PutUint32(b[start:], uint32(len(payload)))
	binary.BigEndian.PutUint32(b[start+4:], crc32.Checksum(payload, castagnoli))
	return b
}

// decodeFrame decodes the frame at the start of b and returns it with its
// length, or ok false when b does not start with a whole, valid frame.
func decodeFrame(b []byte) (f frame, n int, ok bool) {
	if len(b) < frameHead {
		return f, 0, false
	}
	size := int64(binary.BigEndian.Uint32(b))
	if size < minPayload || size > int64(len(b)-frameHead) {
		return f, 0, false
	}
	payload := b[frameHead : frameHead+size]
	if crc32.Checksum(payload, castagnoli) != binary.BigEndian.Uint32(b[4:]) {
		return f, 0, false
	}
	f.epoch = binary.BigEndian.Uint64(payload)
	f.lsn = binary.BigEndian.Uint64(payload[8:])
	f.count = binary.BigEndian.Uint64(payload[16:])
	f.fence = binary.BigEndian.Uint64(payload[24:])
	p := payload[32:]
	nc, k := binary.Uvarint(p)
	if k <= 0 || nc > uint64(len(p)) {
		return f, 0, false
	}
	p = p[k:]
	f.changes = make([]change, 0, nc)
	for range nc {
		kl, k := binary.Uvarint(p)
		if k <= 0 || kl == 0 || kl > uint64(len(p)-k) {
			return f, 0, false
		}
		key := p[k : k+int(kl)]
		p = p[k+int(kl):]
		vl, k := binary.Uvarint(p)
		if k <= 0 || vl > uint64(len(p)-k)+1 {
			return f, 0, false
		}
		var val []byte
		if vl > 0 {
			val = p[k : k+int(vl-1)]
			p = p[k+int(vl-1):]
		} else {
			p = p[k:]
		}
		f.changes = append(f.changes, change{key: key, val: val})
	}
	if len(p) != 0 {
		return f, 0, false
	}
	return f, frameHead + int(size), true
}

// readFrames returns the frames of the log that follow the checkpoint at
// lsn: from the start of the file, each whole and numbered one more than
// the one before, up to the first that is not.
func (w *wal) readFrames(lsn uint64) ([]frame, error) {
	data := make([]byte, walSize)
	n, err := w.f.ReadAt(data, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	data = data[:n]
	var out []frame
	for off := 0; ; {
		f, n, ok := decodeFrame(data[off:])
		if !ok || f.epoch != w.epoch || f.lsn != lsn+1 {
			return out, nil
		}
		out = append(out, f)
		lsn++
		off += n
	}
}

// append writes frame b at the write position and syncs it.
func (w *wal) append(b []byte) error {
	if _, err := w.f.WriteAt(b, w.off); err != nil {
		return err
	}
	if w.sync {
		if err := fdatasync(w.f); err != nil {
			return err
		}
	}
	w.off += int64(len(b))
	return nil
}
