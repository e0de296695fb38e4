package gateway

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"net"
	"net/netip"
	"net/url"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// ConfigError is one problem in a configuration file. Field is the dotted
// path of the offending setting, as in "clusters[1].connect_timeout"; Line
// and Column (1-based) locate its value, or its key for unknown and
// duplicate keys. A problem with the whole file (empty, not YAML, not a
// mapping, unreadable) or with a top-level key that is not a string has an
// empty Field, and Line 0 when the position is not known.
type ConfigError struct {
	File         string
	Line, Column int
	Field        string
	Err          error
}

// Error formats the error as "FILE:LINE:COL: FIELD: message", leaving out
// the parts that are not known.
func (e *ConfigError) Error() string {
	if pe, ok := errors.AsType[*fs.PathError](e.Err); ok && pe.Path == e.File && e.Line == 0 && e.Field == "" {
		return e.Err.Error() // "open FILE: ...": the file is named once
	}
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
	}
	if e.Line > 0 {
		if b.Len() > 0 {
			b.WriteByte(':')
		}
		b.WriteString(strconv.Itoa(e.Line))
		if e.Column > 0 {
			b.WriteByte(':')
			b.WriteString(strconv.Itoa(e.Column))
		}
	}
	if b.Len() == 0 {
		b.WriteString("gateway")
	}
	b.WriteString(": ")
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	if e.Err != nil {
		b.WriteString(e.Err.Error())
	} else {
		b.WriteString("invalid")
	}
	return b.String()
}

// Unwrap returns the underlying error.
func (e *ConfigError) Unwrap() error { return e.Err }

// Whole-file problems, the Err of a ConfigError without Field.
var (
	errEmptyConfig    = errors.New("empty config")
	errNotMapping     = errors.New("config must be a mapping of settings")
	errMultipleDocs   = errors.New("config must be a single YAML document")
	errAliasExpansion = errors.New("aliases expand to too large a config")
	errInvalidYAML    = errors.New("invalid YAML")
	errKeyNotString   = errors.New("keys must be strings") // Field is the mapping's, "" at the top
)

// maxConfigFileSize bounds the files that validation reads (CA bundles,
// certificates, keys), so that a path like /dev/zero cannot exhaust memory.
const maxConfigFileSize = 16 << 20

// LoadConfig reads the file at path and parses it with ParseConfig; the
// returned Config's File is path. A read error is a *ConfigError naming the
// file (errors.Is(err, fs.ErrNotExist) works). Relative paths inside the
// config (certificates, tls.ca_file, http3.key_file) are relative to the
// working directory, not to the config file.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, &ConfigError{File: path, Err: err}
	}
	return ParseConfig(path, data)
}

// ParseConfig parses YAML data read from file (file is used only in
// messages, and stored in the returned Config's File), fills the defaults
// documented on Config's fields into the Config it returns, and validates
// it. data is not modified.
//
// Parsing is strict: unknown keys, duplicate keys, values of the wrong type
// and invalid values are errors. Every problem is reported, in file order:
// the error is a *ConfigError, or an errors.Join of several. Validation reads
// the files the config names (tls.certificates, clusters[].tls.ca_file;
// relative paths are relative to the working directory) and reports those
// that are missing or do not parse.
//
// Besides the documented field defaults:
//   - routes may be omitted when there is exactly one cluster: a default
//     route (any host, path prefix "/") to that cluster is added. Without
//     routes, zero clusters or several clusters are an error;
//   - route hosts are lowercased;
//   - clusters[].tls.enabled is set for protocols h2 and h3, which always
//     use TLS (it is an error with h2c);
//   - no tls.certificates is not an error here: the caller decides (the
//     embedded default generates a certificate);
//   - alt_svc.port stays 0, meaning the port Listen is bound to.
//
// YAML anchors, aliases and merge keys ("<<") may be used.
func ParseConfig(file string, data []byte) (*Config, error) {
	root, ferr := parseYAML(file, data)
	if ferr != nil {
		return nil, ferr
	}
	d := &decoder{
		file:     file,
		pos:      make(map[string]*yaml.Node),
		failed:   make(map[string]bool),
		reported: make(map[*yaml.Node]bool),
		merging:  make(map[*yaml.Node]bool),
	}
	d.budget = 10000 + 10*countNodes(root, 0)
	c := new(Config)
	d.decode(root, reflect.ValueOf(c).Elem(), "")
	if d.exhausted {
		return nil, &ConfigError{File: file, Err: errAliasExpansion}
	}
	c.File = file
	c.setDefaults()
	v := &validator{file: file, pos: d.pos, failed: d.failed, errs: d.errs}
	v.validate(c)
	if err := v.err(); err != nil {
		return nil, err
	}
	return c, nil
}

// Validate reports the problems of c as ParseConfig would, after filling
// defaults into a copy; c is not modified. Its ConfigErrors have no line.
// It is for configs built in code rather than read from a file.
func (c *Config) Validate() error {
	n := c.clone()
	n.setDefaults()
	v := &validator{file: c.File}
	v.validate(n)
	return v.err()
}

// Hash returns the hex SHA-256 of the canonical form of the config: its
// settings with defaults filled in, in field order. Comments, key order,
// anchors and spelled-out defaults do not change it; File and the contents
// of the files the config names do not count.
func (c *Config) Hash() string {
	n := c.clone()
	n.setDefaults()
	h := sha256.New()
	writeCanonical(h, reflect.ValueOf(n).Elem(), "")
	return hex.EncodeToString(h.Sum(nil))
}

// Cluster returns the cluster named name, or nil.
func (c *Config) Cluster(name string) *ClusterConfig {
	for i := range c.Clusters {
		if c.Clusters[i].Name == name {
			return &c.Clusters[i]
		}
	}
	return nil
}

// HTTP3Enabled reports whether HTTP/3 is on: http3.enabled, default true.
func (c *Config) HTTP3Enabled() bool { return c.HTTP3.Enabled == nil || *c.HTTP3.Enabled }

// AltSvcEnabled reports alt_svc.enabled, default true: whether responses
// advertise HTTP/3 unless a route overrides it. Alt-Svc is sent only while
// HTTP3Enabled.
func (c *Config) AltSvcEnabled() bool { return c.AltSvc.Enabled == nil || *c.AltSvc.Enabled }

// MetricsEnabled reports metrics.enabled, default true.
func (c *Config) MetricsEnabled() bool { return c.Metrics.Enabled == nil || *c.Metrics.Enabled }

// AccessLogEnabled reports access_log.enabled, default true.
func (c *Config) AccessLogEnabled() bool { return c.AccessLog.Enabled == nil || *c.AccessLog.Enabled }

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// String formats d as time.Duration does ("1m30s").
func (d Duration) String() string { return time.Duration(d).String() }

// UnmarshalYAML parses a Go duration string ("30s", "1m30s", "250ms").
// Negative durations are an error.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := decodeDuration(n)
	if err != nil {
		return fmt.Errorf("gateway: line %d: %w", n.Line, err)
	}
	*d = v
	return nil
}

// MarshalYAML writes d as a duration string.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// String formats b with the largest binary unit that divides it ("64KiB",
// "6MiB"), or as a plain number of bytes.
func (b ByteSize) String() string {
	for _, u := range []struct {
		name string
		size int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if b != 0 && int64(b)%u.size == 0 {
			return strconv.FormatInt(int64(b)/u.size, 10) + u.name
		}
	}
	return strconv.FormatInt(int64(b), 10)
}

// UnmarshalYAML parses a size: an integer number of bytes or an integer with
// a unit, B, KiB, MiB, GiB, TiB (powers of 1024) or KB, MB, GB, TB (powers
// of 1000), with or without a space: "512KiB", "64 MiB", "10KB". Negative
// sizes are an error.
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	v, err := decodeByteSize(n)
	if err != nil {
		return fmt.Errorf("gateway: line %d: %w", n.Line, err)
	}
	*b = v
	return nil
}

// MarshalYAML writes b as String does, a plain integer when no unit fits.
func (b ByteSize) MarshalYAML() (any, error) {
	s := b.String()
	if _, err := strconv.ParseInt(s, 10, 64); err == nil {
		return int64(b), nil
	}
	return s, nil
}

// parseYAML parses data as one YAML document whose root is a mapping.
func parseYAML(file string, data []byte) (*yaml.Node, *ConfigError) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if err == io.EOF {
			return nil, &ConfigError{File: file, Err: errEmptyConfig}
		}
		return nil, syntaxError(file, err)
	}
	root := &doc
	if root.Kind == yaml.DocumentNode {
		if len(root.Content) == 0 {
			return nil, &ConfigError{File: file, Err: errEmptyConfig}
		}
		root = root.Content[0]
	}
	for {
		// Empty documents after the first ("---" at the end) are harmless.
		var next yaml.Node
		err := dec.Decode(&next)
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, syntaxError(file, err)
		}
		if n := &next; n.Kind == yaml.DocumentNode && len(n.Content) > 0 && !isNull(n.Content[0]) {
			return nil, &ConfigError{File: file, Line: n.Content[0].Line, Column: n.Content[0].Column, Err: errMultipleDocs}
		}
	}
	if isNull(root) {
		return nil, &ConfigError{File: file, Err: errEmptyConfig}
	}
	if r := resolveAlias(root); r == nil || r.Kind != yaml.MappingNode {
		return nil, &ConfigError{File: file, Line: root.Line, Column: root.Column,
			Err: fmt.Errorf("%w, not %s", errNotMapping, describe(root))}
	}
	return root, nil
}

// syntaxError converts a yaml syntax error. yaml.v3 reports them as plain
// errors formatted "yaml: line N: problem"; the line is taken from there
// when present, only to place it (the error is not classified by its text).
func syntaxError(file string, err error) *ConfigError {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if num, after, ok := strings.Cut(rest, ": "); ok {
			if n, err := strconv.Atoi(num); err == nil && n > 0 {
				line, msg = n, after
			}
		}
	}
	return &ConfigError{File: file, Line: line, Err: fmt.Errorf("%w: %s", errInvalidYAML, msg)}
}

// countNodes counts the nodes of the tree (aliases not followed), to budget
// alias expansion.
func countNodes(n *yaml.Node, depth int) int {
	if n == nil || depth > 10000 {
		return 0
	}
	total := 1
	for _, c := range n.Content {
		total += countNodes(c, depth+1)
	}
	return total
}

func resolveAlias(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && i < 100; i++ {
		n = n.Alias
	}
	if n != nil && n.Kind == yaml.AliasNode {
		return nil
	}
	return n
}

func isNull(n *yaml.Node) bool {
	n = resolveAlias(n)
	return n == nil || n.Kind == 0 || (n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null")
}

// describe names a node's kind for messages: `a list`, `string "x"`.
func describe(n *yaml.Node) string {
	n = resolveAlias(n)
	if n == nil {
		return "null"
	}
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		v := n.Value
		if len(v) > 40 {
			v = v[:40] + "..."
		}
		switch n.ShortTag() {
		case "!!null":
			return "null"
		case "!!str":
			return "string " + strconv.Quote(v)
		case "!!int":
			return "integer " + v
		case "!!float":
			return "number " + v
		case "!!bool":
			return "boolean " + v
		default:
			return n.ShortTag() + " " + strconv.Quote(v)
		}
	}
	return "a document"
}

var (
	durationType = reflect.TypeFor[Duration]()
	byteSizeType = reflect.TypeFor[ByteSize]()
)

// decoder decodes a yaml.Node tree into a Config strictly, recording the
// node of every field path for later validation messages.
type decoder struct {
	file      string
	errs      []*ConfigError
	pos       map[string]*yaml.Node // field path -> value node ("" is the root)
	failed    map[string]bool       // field paths whose value was rejected
	reported  map[*yaml.Node]bool   // duplicate keys already reported
	merging   map[*yaml.Node]bool   // merge sources being expanded (cycle guard)
	budget    int                   // node visits left, bounds alias expansion
	exhausted bool
}

// fail reports that the value at path was rejected (and left zero).
func (d *decoder) fail(path string, n *yaml.Node, err error) {
	d.failed[path] = true
	d.report(path, n, err)
}

// report reports a problem at n without rejecting the value at path.
func (d *decoder) report(path string, n *yaml.Node, err error) {
	d.errs = append(d.errs, &ConfigError{File: d.file, Line: n.Line, Column: n.Column, Field: path, Err: err})
}

func (d *decoder) spend() bool {
	if d.budget--; d.budget < 0 {
		d.exhausted = true
	}
	return !d.exhausted
}

// decode decodes n into v, which has the type of the field at path.
func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) {
	if !d.spend() {
		return
	}
	d.pos[path] = n
	r := resolveAlias(n)
	if r == nil || isNull(r) {
		return // absent: the zero value, the default
	}
	if r.Kind == yaml.ScalarNode && !strings.HasPrefix(r.ShortTag(), "!!") {
		d.fail(path, n, fmt.Errorf("unsupported tag %q", r.ShortTag()))
		return
	}
	switch v.Type() {
	case durationType:
		x, err := decodeDuration(r)
		if err != nil {
			d.fail(path, n, err)
			return
		}
		v.SetInt(int64(x))
		return
	case byteSizeType:
		x, err := decodeByteSize(r)
		if err != nil {
			d.fail(path, n, err)
			return
		}
		v.SetInt(int64(x))
		return
	}
	switch v.Kind() {
	case reflect.Struct:
		if r.Kind != yaml.MappingNode {
			d.fail(path, n, fmt.Errorf("expected a mapping, got %s", describe(r)))
			return
		}
		d.decodeStruct(r, v, path)
	case reflect.Slice:
		if r.Kind != yaml.SequenceNode {
			d.fail(path, n, fmt.Errorf("expected a list, got %s", describe(r)))
			return
		}
		s := reflect.MakeSlice(v.Type(), len(r.Content), len(r.Content))
		for i, e := range r.Content {
			d.decode(e, s.Index(i), path+"["+strconv.Itoa(i)+"]")
		}
		v.Set(s)
	case reflect.Pointer:
		p := reflect.New(v.Type().Elem())
		before := len(d.errs)
		d.decode(n, p.Elem(), path)
		if len(d.errs) == before {
			v.Set(p)
		}
	case reflect.String:
		if r.Kind != yaml.ScalarNode {
			d.fail(path, n, fmt.Errorf("expected a string, got %s", describe(r)))
			return
		}
		v.SetString(r.Value)
	case reflect.Bool:
		if r.Kind != yaml.ScalarNode || r.ShortTag() != "!!bool" {
			d.fail(path, n, fmt.Errorf("expected true or false, got %s", describe(r)))
			return
		}
		switch strings.ToLower(r.Value) {
		case "true":
			v.SetBool(true)
		case "false":
			v.SetBool(false)
		default:
			d.fail(path, n, fmt.Errorf("expected true or false, got %s", describe(r)))
		}
	case reflect.Int, reflect.Int64:
		if r.Kind != yaml.ScalarNode || r.ShortTag() != "!!int" {
			d.fail(path, n, fmt.Errorf("expected an integer, got %s", describe(r)))
			return
		}
		x, err := parseYAMLInt(r.Value)
		if err != nil || v.OverflowInt(x) {
			d.fail(path, n, fmt.Errorf("integer %s out of range", r.Value))
			return
		}
		v.SetInt(x)
	case reflect.Float64:
		// A YAML float or integer ("0.01", "1", "1e-3"); not .inf or .nan.
		if r.Kind != yaml.ScalarNode || (r.ShortTag() != "!!float" && r.ShortTag() != "!!int") {
			d.fail(path, n, fmt.Errorf("expected a number, got %s", describe(r)))
			return
		}
		x, err := strconv.ParseFloat(strings.ReplaceAll(r.Value, "_", ""), 64)
		if r.ShortTag() == "!!int" {
			var i int64
			i, err = parseYAMLInt(r.Value)
			x = float64(i)
		}
		if err != nil || math.IsInf(x, 0) || math.IsNaN(x) {
			d.fail(path, n, fmt.Errorf("invalid number %s", r.Value))
			return
		}
		v.SetFloat(x)
	default:
		// Config holds no other kinds; a new field of another kind needs a case.
		d.fail(path, n, fmt.Errorf("unsupported setting type %s", v.Type()))
	}
}

// parseYAMLInt parses a YAML integer (decimal, 0x, 0o, 0b, with "_").
func parseYAMLInt(s string) (int64, error) {
	return strconv.ParseInt(strings.ReplaceAll(s, "_", ""), 0, 64)
}

type mapEntry struct {
	name     string
	key, val *yaml.Node
}

func (d *decoder) decodeStruct(n *yaml.Node, v reflect.Value, path string) {
	fields := yamlFields(v.Type())
	for _, e := range d.entries(n, path) {
		child := fieldPath(path, e.name)
		i := slices.IndexFunc(fields, func(f yamlField) bool { return f.name == e.name })
		if i < 0 {
			msg := "unknown field"
			if s := suggest(e.name, fields); s != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", s)
			}
			d.report(child, e.key, errors.New(msg))
			continue
		}
		d.decode(e.val, v.Field(fields[i].index), child)
	}
}

// entries returns the key/value pairs of mapping n, merge keys expanded
// (explicit keys win over merged ones, earlier merge sources over later
// ones), reporting non-string and duplicate keys.
func (d *decoder) entries(n *yaml.Node, path string) []mapEntry {
	var out []mapEntry
	seen := make(map[string]*yaml.Node)
	var merges []*yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		if !d.spend() {
			return nil
		}
		k, val := n.Content[i], n.Content[i+1]
		kr := resolveAlias(k)
		if kr == nil || kr.Kind != yaml.ScalarNode {
			d.report(path, k, fmt.Errorf("%w, got %s", errKeyNotString, describe(k)))
			continue
		}
		if kr.ShortTag() == "!!merge" {
			merges = append(merges, val)
			continue
		}
		if first, dup := seen[kr.Value]; dup {
			if !d.reported[k] {
				d.reported[k] = true
				d.report(fieldPath(path, kr.Value), k, fmt.Errorf("duplicate key (first at line %d)", first.Line))
			}
			continue
		}
		seen[kr.Value] = k
		out = append(out, mapEntry{name: kr.Value, key: k, val: val})
	}
	for _, m := range merges {
		var sources []*yaml.Node
		switch r := resolveAlias(m); {
		case r != nil && r.Kind == yaml.MappingNode:
			sources = []*yaml.Node{r}
		case r != nil && r.Kind == yaml.SequenceNode:
			for _, e := range r.Content {
				sources = append(sources, resolveAlias(e))
			}
		default:
			sources = []*yaml.Node{nil}
		}
		for _, src := range sources {
			if src == nil || src.Kind != yaml.MappingNode {
				d.report(fieldPath(path, "<<"), m, errors.New("a merge key (<<) takes a mapping or a list of mappings"))
				break
			}
			if d.merging[src] {
				d.report(fieldPath(path, "<<"), m, errors.New("merge key (<<) refers to a mapping that contains it"))
				break
			}
			d.merging[src] = true
			for _, e := range d.entries(src, path) {
				if _, ok := seen[e.name]; !ok {
					seen[e.name] = e.key
					out = append(out, e)
				}
			}
			delete(d.merging, src)
		}
	}
	return out
}

// fieldPath appends key name to path: "clusters[0]" + "pool" is
// "clusters[0].pool". Names that are not plain words are quoted.
func fieldPath(path, name string) string {
	plain := name != ""
	for _, c := range []byte(name) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			plain = false
			break
		}
	}
	if !plain {
		name = strconv.Quote(name)
	}
	if path == "" {
		return name
	}
	return path + "." + name
}

type yamlField struct {
	name  string
	index int
}

// yamlFields lists the YAML keys of struct type t, in field order.
func yamlFields(t reflect.Type) []yamlField {
	var fs []yamlField
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if !f.IsExported() || name == "-" || name == "" {
			continue
		}
		fs = append(fs, yamlField{name: name, index: i})
	}
	return fs
}

// suggest returns the known field closest to name, if close enough to be a
// likely typo.
func suggest(name string, fields []yamlField) string {
	best, bestDist := "", 3
	for _, f := range fields {
		if d := editDistance(strings.ToLower(name), f.name); d < bestDist {
			best, bestDist = f.name, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return math.MaxInt
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func decodeDuration(n *yaml.Node) (Duration, error) {
	if n.Kind != yaml.ScalarNode {
		return 0, fmt.Errorf("expected a duration, got %s", describe(n))
	}
	if isNull(n) {
		return 0, nil
	}
	return parseDuration(n.Value)
}

func parseDuration(s string) (Duration, error) {
	t := strings.TrimSpace(s)
	d, err := time.ParseDuration(t)
	if err != nil {
		if _, nerr := strconv.ParseFloat(t, 64); nerr == nil {
			return 0, fmt.Errorf("invalid duration %q: missing unit, as in \"%ss\"", s, t)
		}
		return 0, fmt.Errorf("invalid duration %q: want a number and a unit, as in \"30s\", \"1m30s\" or \"250ms\"", s)
	}
	if d < 0 {
		return 0, fmt.Errorf("invalid duration %q: must not be negative", s)
	}
	return Duration(d), nil
}

func decodeByteSize(n *yaml.Node) (ByteSize, error) {
	if n.Kind != yaml.ScalarNode {
		return 0, fmt.Errorf("expected a size, got %s", describe(n))
	}
	if isNull(n) {
		return 0, nil
	}
	if n.ShortTag() == "!!int" {
		x, err := parseYAMLInt(n.Value)
		if err != nil {
			return 0, fmt.Errorf("invalid size %q: out of range", n.Value)
		}
		if x < 0 {
			return 0, fmt.Errorf("invalid size %q: must not be negative", n.Value)
		}
		return ByteSize(x), nil
	}
	return parseByteSize(n.Value)
}

var byteUnits = map[string]int64{
	"B":  1,
	"KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
	"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40,
}

func parseByteSize(s string) (ByteSize, error) {
	t := strings.TrimSpace(s)
	i := len(t)
	for i > 0 && (t[i-1] >= 'a' && t[i-1] <= 'z' || t[i-1] >= 'A' && t[i-1] <= 'Z') {
		i--
	}
	num, unit := strings.TrimSpace(t[:i]), t[i:]
	mult := int64(1)
	if unit != "" {
		var ok bool
		if mult, ok = byteUnits[unit]; !ok {
			return 0, fmt.Errorf("invalid size %q: unknown unit %q (use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)", s, unit)
		}
	}
	x, err := strconv.ParseInt(num, 10, 64)
	if err != nil {
		if ne, ok := errors.AsType[*strconv.NumError](err); ok && ne.Err == strconv.ErrRange {
			return 0, fmt.Errorf("invalid size %q: too large", s)
		}
		return 0, fmt.Errorf("invalid size %q: want a whole number of bytes, with an optional unit, as in \"512KiB\"", s)
	}
	if x < 0 {
		return 0, fmt.Errorf("invalid size %q: must not be negative", s)
	}
	if x > math.MaxInt64/mult {
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	return ByteSize(x * mult), nil
}

// clone returns a copy of c that shares no slice with it.
func (c *Config) clone() *Config {
	n := *c
	n.TLS.Certificates = slices.Clone(c.TLS.Certificates)
	n.TrustedProxies = slices.Clone(c.TrustedProxies)
	n.Routes = slices.Clone(c.Routes)
	n.Clusters = slices.Clone(c.Clusters)
	for i := range n.Clusters {
		n.Clusters[i].Servers = slices.Clone(n.Clusters[i].Servers)
	}
	return &n
}

func orDefault[T comparable](p *T, def T) {
	var zero T
	if *p == zero {
		*p = def
	}
}

// setDefaults fills the documented defaults into the zero fields of c and
// normalizes it (see ParseConfig). It only assigns fields of c itself: the
// pointers it finds are not written through.
func (c *Config) setDefaults() {
	orDefault(&c.Listen, ":8443")
	orDefault(&c.TLS.HandshakeTimeout, Duration(10*time.Second))
	orDefault(&c.HTTP2.Engine, "native")
	orDefault(&c.HTTP2.InitialStreamWindow, 1<<20)
	orDefault(&c.HTTP2.InitialConnWindow, 4<<20)
	orDefault(&c.HTTP3.Engine, "native")

	h := &c.HTTP3
	if h.Enabled == nil {
		h.Enabled = new(true)
	}
	orDefault(&h.IdleTimeout, Duration(30*time.Second))
	orDefault(&h.HandshakeTimeout, Duration(10*time.Second))
	orDefault(&h.MaxStreams, 250)
	orDefault(&h.InitialStreamWindow, 512<<10)
	orDefault(&h.MaxStreamWindow, 6<<20)
	orDefault(&h.InitialConnWindow, 768<<10)
	orDefault(&h.MaxConnWindow, 15<<20)
	orDefault(&h.EarlyData, "off")
	orDefault(&h.Retry, "auto")
	orDefault(&h.RetryAbove, 1000)
	orDefault(&h.MaxHandshakesPerSecond, 5000)
	orDefault(&h.MaxConnsPerSource, 100)

	if c.AltSvc.Enabled == nil {
		c.AltSvc.Enabled = new(true)
	}
	orDefault(&c.AltSvc.MaxAge, Duration(24*time.Hour))

	l := &c.Limits
	orDefault(&l.MaxHeaderBytes, 64<<10)
	orDefault(&l.MaxHeaderCount, 100)
	orDefault(&l.MaxRequestLine, 8<<10)
	orDefault(&l.HeaderTimeout, Duration(10*time.Second))
	orDefault(&l.IdleTimeout, Duration(120*time.Second))
	orDefault(&l.WriteTimeout, Duration(30*time.Second))
	orDefault(&l.MaxConcurrentStreams, 250)

	orDefault(&c.DrainTimeout, Duration(30*time.Second))
	orDefault(&c.Admin.Listen, "127.0.0.1:9901")
	orDefault(&c.Log.Level, "info")
	orDefault(&c.Log.Format, "auto")
	orDefault(&c.Log.Buffer, DefaultLogBuffer)
	if c.AccessLog.Enabled == nil {
		c.AccessLog.Enabled = new(true)
	}
	if c.AccessLog.SampleRatio == nil {
		c.AccessLog.SampleRatio = new(1.0)
	}
	if c.AccessLog.Errors == nil {
		c.AccessLog.Errors = new(true)
	}
	if c.Metrics.Enabled == nil {
		c.Metrics.Enabled = new(true)
	}
	t := &c.Tracing
	if t.SampleRatio == nil {
		t.SampleRatio = new(0.01)
	}
	orDefault(&t.ServiceName, ProxyName)
	orDefault(&t.QueueSize, 2048)
	orDefault(&t.BatchSize, 512)
	orDefault(&t.FlushInterval, Duration(5*time.Second))
	orDefault(&t.Timeout, Duration(10*time.Second))

	for i := range c.Clusters {
		cl := &c.Clusters[i]
		orDefault(&cl.Protocol, "h1")
		orDefault(&cl.Balancing, "round_robin")
		if cl.Protocol == "h2" || cl.Protocol == "h3" {
			cl.TLS.Enabled = true
		}
		orDefault(&cl.ConnectTimeout, Duration(5*time.Second))
		orDefault(&cl.TLSHandshakeTimeout, Duration(10*time.Second))
		orDefault(&cl.ResponseHeaderTimeout, Duration(30*time.Second))
		orDefault(&cl.Pool.MaxConns, 256)
		orDefault(&cl.Pool.MaxIdle, cl.Pool.MaxConns)
		orDefault(&cl.Pool.IdleTimeout, Duration(90*time.Second))
		if cl.Pool.DialBackoff == nil {
			cl.Pool.DialBackoff = new(Duration(10 * time.Millisecond))
		}
		orDefault(&cl.Pool.DialBackoffMax, Duration(250*time.Millisecond))
		// pool.max_requests and pool.max_lifetime default to 0: unlimited.
		orDefault(&cl.Retries.Max, 2)
		orDefault(&cl.Retries.BudgetPercent, 20)
		orDefault(&cl.Retries.MinPerSecond, 10)
		orDefault(&cl.HealthCheck.Interval, Duration(10*time.Second))
		orDefault(&cl.HealthCheck.Timeout, Duration(2*time.Second))
		orDefault(&cl.HealthCheck.HealthyThreshold, 2)
		orDefault(&cl.HealthCheck.UnhealthyThreshold, 3)
		orDefault(&cl.OutlierDetection.ConsecutiveFailures, 5)
		orDefault(&cl.OutlierDetection.BaseEjection, Duration(30*time.Second))
		orDefault(&cl.OutlierDetection.MaxEjection, Duration(5*time.Minute))
	}
	if len(c.Routes) == 0 && len(c.Clusters) == 1 && c.Clusters[0].Name != "" {
		c.Routes = []RouteConfig{{Cluster: c.Clusters[0].Name}}
	}
	for i := range c.Routes {
		r := &c.Routes[i]
		r.Host = strings.ToLower(r.Host)
		orDefault(&r.PathPrefix, "/")
	}
}

// validator collects the semantic problems of a defaulted Config.
type validator struct {
	file   string
	pos    map[string]*yaml.Node // from the decoder; nil for Validate
	failed map[string]bool       // paths the decoder already reported
	errs   []*ConfigError
}

func (v *validator) add(path string, err error) {
	// A value the decoder rejected was left zero (then defaulted): do not
	// report it, or what it contains, a second time.
	for p := path; ; p = parentPath(p) {
		if v.failed[p] {
			return
		}
		if p == "" {
			break
		}
	}
	e := &ConfigError{File: v.file, Field: path, Err: err}
	if v.pos != nil {
		for p := path; ; p = parentPath(p) {
			if n, ok := v.pos[p]; ok {
				e.Line, e.Column = n.Line, n.Column
				break
			}
			if p == "" {
				break
			}
		}
	}
	v.errs = append(v.errs, e)
}

func (v *validator) errorf(path, format string, args ...any) {
	v.add(path, fmt.Errorf(format, args...))
}

// parentPath strips the last component of a field path.
func parentPath(p string) string {
	i := strings.LastIndexAny(p, ".[")
	if i < 0 {
		return ""
	}
	return p[:i]
}

// err returns the problems in file order: nil, one *ConfigError or an
// errors.Join of them.
func (v *validator) err() error {
	slices.SortStableFunc(v.errs, func(a, b *ConfigError) int {
		return cmp.Or(cmp.Compare(a.Line, b.Line), cmp.Compare(a.Column, b.Column))
	})
	switch len(v.errs) {
	case 0:
		return nil
	case 1:
		return v.errs[0]
	}
	errs := make([]error, len(v.errs))
	for i, e := range v.errs {
		errs[i] = e
	}
	return errors.Join(errs...)
}

func (v *validator) oneOf(path, val string, allowed ...string) {
	if !slices.Contains(allowed, val) {
		v.errorf(path, "%q is not one of %s", val, strings.Join(allowed, ", "))
	}
}

func (v *validator) nonNegative(path string, x int) {
	if x < 0 {
		v.errorf(path, "must not be negative, got %d", x)
	}
}

func (v *validator) positive(path string, x int) {
	if x < 1 {
		v.errorf(path, "must be at least 1, got %d", x)
	}
}

// ratio checks a fraction: 0 to 1; nil is the default.
func (v *validator) ratio(path string, r *float64) {
	if r != nil && !(*r >= 0 && *r <= 1) {
		v.errorf(path, "must be between 0 and 1, got %v", *r)
	}
}

// checkCollectorURL checks tracing.endpoint: an http or https URL with a host
// and no query; spans go to its path + "/v1/traces".
func checkCollectorURL(s string) error {
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return fmt.Errorf("invalid URL %q", s)
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("%q: want an http:// or https:// URL, as in \"http://otel-collector:4318\"", s)
	case u.Host == "":
		return fmt.Errorf("%q: no host", s)
	case u.RawQuery != "" || u.Fragment != "" || u.User != nil:
		return fmt.Errorf("%q: a base URL has no query, fragment or user", s)
	}
	return nil
}

func (v *validator) duration(path string, d Duration) {
	if d < 0 {
		v.errorf(path, "must not be negative, got %s", d)
	}
}

func (v *validator) size(path string, b ByteSize) {
	if b < 0 {
		v.errorf(path, "must not be negative, got %d", int64(b))
	}
}

func (v *validator) validate(c *Config) {
	if err := checkHostPort(c.Listen, false, true, "host:port"); err != nil {
		v.add("listen", err)
	}

	for i, cc := range c.TLS.Certificates {
		v.certificate(fmt.Sprintf("tls.certificates[%d]", i), cc)
	}
	v.duration("tls.handshake_timeout", c.TLS.HandshakeTimeout)

	h := c.HTTP3
	v.duration("http3.idle_timeout", h.IdleTimeout)
	v.duration("http3.handshake_timeout", h.HandshakeTimeout)
	v.duration("http3.keep_alive_period", h.KeepAlivePeriod)
	v.nonNegative("http3.max_streams", h.MaxStreams)
	v.size("http3.initial_stream_window", h.InitialStreamWindow)
	v.size("http3.max_stream_window", h.MaxStreamWindow)
	v.size("http3.initial_conn_window", h.InitialConnWindow)
	v.size("http3.max_conn_window", h.MaxConnWindow)
	if h.InitialStreamWindow > h.MaxStreamWindow {
		v.errorf("http3.initial_stream_window", "%s exceeds max_stream_window %s", h.InitialStreamWindow, h.MaxStreamWindow)
	}
	if h.InitialConnWindow > h.MaxConnWindow {
		v.errorf("http3.initial_conn_window", "%s exceeds max_conn_window %s", h.InitialConnWindow, h.MaxConnWindow)
	}
	v.oneOf("http2.engine", c.HTTP2.Engine, "native", "xnet")
	for _, w := range []struct {
		path string
		v    ByteSize
	}{{"http2.initial_stream_window", c.HTTP2.InitialStreamWindow}, {"http2.initial_conn_window", c.HTTP2.InitialConnWindow}} {
		if w.v < 65535 || w.v > 1<<31-1 {
			v.errorf(w.path, "must be between 65535 and 2147483647 bytes, got %d", int64(w.v))
		}
	}
	v.oneOf("http3.engine", c.HTTP3.Engine, "native", "quicgo")
	v.oneOf("http3.early_data", h.EarlyData, "off", "safe")
	v.oneOf("http3.retry", h.Retry, "never", "always", "auto")
	v.nonNegative("http3.retry_above", h.RetryAbove)
	v.nonNegative("http3.max_handshakes_per_second", h.MaxHandshakesPerSecond)
	v.nonNegative("http3.max_conns_per_source", h.MaxConnsPerSource)

	v.duration("alt_svc.max_age", c.AltSvc.MaxAge)
	if p := c.AltSvc.Port; p < 0 || p > 65535 {
		v.errorf("alt_svc.port", "port %d out of range 1-65535", p)
	}

	l := c.Limits
	v.size("limits.max_header_bytes", l.MaxHeaderBytes)
	v.nonNegative("limits.max_header_count", l.MaxHeaderCount)
	v.size("limits.max_request_line", l.MaxRequestLine)
	v.duration("limits.header_timeout", l.HeaderTimeout)
	v.duration("limits.idle_timeout", l.IdleTimeout)
	v.duration("limits.write_timeout", l.WriteTimeout)
	v.size("limits.max_body_bytes", l.MaxBodyBytes)
	v.nonNegative("limits.max_concurrent_streams", l.MaxConcurrentStreams)
	if l.MaxConcurrentStreams > math.MaxUint32 {
		// SETTINGS_MAX_CONCURRENT_STREAMS is a 32-bit value (RFC 9113, 6.5.1).
		v.errorf("limits.max_concurrent_streams", "%d exceeds the HTTP/2 maximum %d", l.MaxConcurrentStreams, uint32(math.MaxUint32))
	}

	for i, s := range c.TrustedProxies {
		if err := checkTrustedProxy(s); err != nil {
			v.add(fmt.Sprintf("trusted_proxies[%d]", i), err)
		}
	}

	v.duration("drain_timeout", c.DrainTimeout)
	v.duration("shutdown_delay", c.ShutdownDelay)

	if c.Admin.Listen != "off" {
		if err := checkHostPort(c.Admin.Listen, false, true, `host:port or "off"`); err != nil {
			v.add("admin.listen", err)
		} else if sameListener(c.Admin.Listen, c.Listen) {
			v.errorf("admin.listen", "%q conflicts with listen %q", c.Admin.Listen, c.Listen)
		}
	}

	v.oneOf("log.level", c.Log.Level, "debug", "info", "warn", "error")
	v.oneOf("log.format", c.Log.Format, "auto", "text", "json")
	v.positive("log.buffer", c.Log.Buffer)
	v.ratio("access_log.sample_ratio", c.AccessLog.SampleRatio)

	t := c.Tracing
	if t.Endpoint != "" {
		if err := checkCollectorURL(t.Endpoint); err != nil {
			v.add("tracing.endpoint", err)
		}
	}
	v.ratio("tracing.sample_ratio", t.SampleRatio)
	v.positive("tracing.queue_size", t.QueueSize)
	v.positive("tracing.batch_size", t.BatchSize)
	v.duration("tracing.flush_interval", t.FlushInterval)
	v.duration("tracing.timeout", t.Timeout)

	names := make(map[string]int, len(c.Clusters))
	for i := range c.Clusters {
		v.cluster(i, &c.Clusters[i], names)
	}

	switch {
	case len(c.Clusters) == 0:
		v.errorf("clusters", "at least one cluster is required")
	case len(c.Routes) == 0 && len(c.Clusters) > 1:
		v.errorf("routes", "required when there is more than one cluster")
	}
	routes := make(map[string]int, len(c.Routes))
	for i := range c.Routes {
		v.route(i, &c.Routes[i], names, routes, len(c.Clusters) > 0)
	}
}

func (v *validator) certificate(p string, cc CertificateConfig) {
	var certPEM, keyPEM []byte
	var err error
	ok := true
	if cc.Cert == "" {
		v.errorf(p+".cert", "required")
		ok = false
	} else if certPEM, err = readConfigFile(cc.Cert); err != nil {
		v.add(p+".cert", err)
		ok = false
	}
	if cc.Key == "" {
		v.errorf(p+".key", "required")
		ok = false
	} else if keyPEM, err = readConfigFile(cc.Key); err != nil {
		v.add(p+".key", err)
		ok = false
	}
	if ok {
		if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
			v.add(p, fmt.Errorf("cert %q and key %q: %w", cc.Cert, cc.Key, err))
		}
	}
}

func (v *validator) cluster(i int, cl *ClusterConfig, names map[string]int) {
	p := fmt.Sprintf("clusters[%d]", i)
	// Invalid names are still registered, so that routes naming them do
	// not add a second error.
	first, dup := names[cl.Name]
	switch {
	case cl.Name == "":
		v.errorf(p+".name", "required")
	case !validClusterName(cl.Name):
		v.errorf(p+".name", "%q must be lowercase letters, digits, '_' and '-'", cl.Name)
	case dup:
		v.errorf(p+".name", "duplicate cluster %q (first is clusters[%d])", cl.Name, first)
	}
	if !dup && cl.Name != "" {
		names[cl.Name] = i
	}
	if len(cl.Servers) == 0 {
		v.errorf(p+".servers", "at least one server is required")
	}
	for j, s := range cl.Servers {
		if err := checkHostPort(s, true, false, "host:port"); err != nil {
			v.add(fmt.Sprintf("%s.servers[%d]", p, j), err)
		}
	}
	v.oneOf(p+".protocol", cl.Protocol, "h1", "h2", "h2c", "h3")
	v.oneOf(p+".balancing", cl.Balancing, "round_robin", "least_request")

	t := cl.TLS
	switch {
	case cl.Protocol == "h2c" && t.Enabled:
		v.errorf(p+".tls.enabled", "h2c is HTTP/2 over cleartext TCP; use protocol h2 for TLS")
	case !t.Enabled && (cl.Protocol == "h1" || cl.Protocol == "h2c"):
		// TLS settings without TLS are a mistake, not something to ignore.
		for _, f := range []struct {
			name string
			set  bool
		}{{"server_name", t.ServerName != ""}, {"ca_file", t.CAFile != ""}, {"insecure_skip_verify", t.InsecureSkipVerify}} {
			if f.set {
				v.errorf(p+".tls."+f.name, "set but TLS is off (set tls.enabled, or use protocol h2 or h3)")
			}
		}
	}
	if t.ServerName != "" {
		if err := checkDNSName(strings.TrimSuffix(strings.ToLower(t.ServerName), ".")); err != nil {
			if _, aerr := netip.ParseAddr(t.ServerName); aerr != nil {
				v.add(p+".tls.server_name", err)
			}
		}
	}
	if t.CAFile != "" {
		if pem, err := readConfigFile(t.CAFile); err != nil {
			v.add(p+".tls.ca_file", err)
		} else if !x509.NewCertPool().AppendCertsFromPEM(pem) {
			v.errorf(p+".tls.ca_file", "no PEM certificates in %q", t.CAFile)
		}
	}
	v.duration(p+".connect_timeout", cl.ConnectTimeout)
	v.duration(p+".tls_handshake_timeout", cl.TLSHandshakeTimeout)
	v.duration(p+".response_header_timeout", cl.ResponseHeaderTimeout)
	v.nonNegative(p+".pool.max_conns", cl.Pool.MaxConns)
	v.nonNegative(p+".pool.max_idle", cl.Pool.MaxIdle)
	v.duration(p+".pool.idle_timeout", cl.Pool.IdleTimeout)
	v.nonNegative(p+".pool.max_requests", cl.Pool.MaxRequests)
	v.duration(p+".pool.max_lifetime", cl.Pool.MaxLifetime)
	v.duration(p+".pool.dial_backoff_max", cl.Pool.DialBackoffMax)
	v.duration(p+".try_timeout", cl.TryTimeout)
	v.duration(p+".body_idle_timeout", cl.BodyIdleTimeout)
	v.duration(p+".timeout", cl.Timeout)
	v.nonNegative(p+".max_concurrent_requests", cl.MaxConcurrentRequests)
	v.nonNegative(p+".max_pending_requests", cl.MaxPendingRequests)
	if cl.Retries.Max < -1 {
		v.errorf(p+".retries.max", "must be -1 (no retries) or more, got %d", cl.Retries.Max)
	}
	if b := cl.Retries.BudgetPercent; b < 0 || b > 100 {
		v.errorf(p+".retries.budget_percent", "must be 0-100, got %d", b)
	}
	v.nonNegative(p+".retries.min_per_second", cl.Retries.MinPerSecond)
	hc := cl.HealthCheck
	if hc.Path != "" && !strings.HasPrefix(hc.Path, "/") {
		v.errorf(p+".health_check.path", "%q must start with /", hc.Path)
	}
	if hc.Host != "" {
		if err := checkDNSName(strings.ToLower(hostOnly(hc.Host))); err != nil {
			if _, aerr := netip.ParseAddr(hostOnly(hc.Host)); aerr != nil {
				v.add(p+".health_check.host", err)
			}
		}
	}
	v.duration(p+".health_check.interval", hc.Interval)
	v.duration(p+".health_check.timeout", hc.Timeout)
	if hc.HealthyThreshold < 1 {
		v.errorf(p+".health_check.healthy_threshold", "must be at least 1, got %d", hc.HealthyThreshold)
	}
	if hc.UnhealthyThreshold < 1 {
		v.errorf(p+".health_check.unhealthy_threshold", "must be at least 1, got %d", hc.UnhealthyThreshold)
	}
	if s := hc.ExpectedStatus; s != 0 && (s < 100 || s > 599) {
		v.errorf(p+".health_check.expected_status", "%d is not an HTTP status", s)
	}
	od := cl.OutlierDetection
	if od.ConsecutiveFailures < -1 {
		v.errorf(p+".outlier_detection.consecutive_failures", "must be -1 (off) or more, got %d", od.ConsecutiveFailures)
	}
	v.duration(p+".outlier_detection.base_ejection", od.BaseEjection)
	v.duration(p+".outlier_detection.max_ejection", od.MaxEjection)
}

func (v *validator) route(i int, r *RouteConfig, clusters, seen map[string]int, haveClusters bool) {
	p := fmt.Sprintf("routes[%d]", i)
	if err := checkRouteHost(r.Host); err != nil {
		v.add(p+".host", err)
	}
	if !strings.HasPrefix(r.PathPrefix, "/") {
		v.errorf(p+".path_prefix", "%q must start with \"/\"", r.PathPrefix)
	} else if i := strings.IndexFunc(r.PathPrefix, func(c rune) bool { return c <= ' ' || c == 0x7f || c == '?' || c == '#' }); i >= 0 {
		v.errorf(p+".path_prefix", "%q: %q is not allowed in a path prefix", r.PathPrefix, r.PathPrefix[i])
	}
	switch _, ok := clusters[r.Cluster]; {
	case r.Cluster == "":
		v.errorf(p+".cluster", "required")
	case !ok && haveClusters:
		v.errorf(p+".cluster", "unknown cluster %q", r.Cluster)
	}
	// "/api" and "/api/" match the same requests.
	prefix := r.PathPrefix
	if len(prefix) > 1 {
		prefix = strings.TrimSuffix(prefix, "/")
	}
	key := r.Host + " " + prefix
	if first, dup := seen[key]; dup {
		v.errorf(p, "duplicate route: same host and path_prefix as routes[%d]", first)
	} else {
		seen[key] = i
	}
}

// checkHostPort checks a host:port address with a numeric port 1-65535, or
// 0 when listen (a listening address: the kernel picks a free port, as tests
// do); the host may be empty (all addresses) unless requireHost. want
// describes the expected form in messages.
func checkHostPort(s string, requireHost, listen bool, want string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		if ae, ok := errors.AsType[*net.AddrError](err); ok {
			return fmt.Errorf("invalid address %q: %s (want %s)", s, ae.Err, want)
		}
		return fmt.Errorf("invalid address %q (want %s)", s, want)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || (p == 0 && !listen) {
		return fmt.Errorf("invalid address %q: port %q is not in 1-65535", s, port)
	}
	if host == "" {
		if requireHost {
			return fmt.Errorf("invalid address %q: missing host", s)
		}
		return nil
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return nil
	}
	if err := checkDNSName(strings.TrimSuffix(strings.ToLower(host), ".")); err != nil {
		return fmt.Errorf("invalid address %q: %w", s, err)
	}
	return nil
}

// sameListener reports whether TCP addresses a and b (both valid) would
// conflict: same port, and the same host or one of them on all addresses.
func sameListener(a, b string) bool {
	ha, pa, err1 := net.SplitHostPort(a)
	hb, pb, err2 := net.SplitHostPort(b)
	if err1 != nil || err2 != nil || pa != pb || pa == "0" {
		return false
	}
	return ha == hb || ha == "" || hb == ""
}

// checkDNSName checks a lowercase DNS host name (RFC 1123 labels).
func checkDNSName(s string) error {
	if s == "" {
		return errors.New("empty host name")
	}
	if len(s) > 253 {
		return fmt.Errorf("host name %.20q... longer than 253 characters", s)
	}
	for label := range strings.SplitSeq(s, ".") {
		if label == "" {
			return fmt.Errorf("host name %q has an empty label", s)
		}
		if len(label) > 63 {
			return fmt.Errorf("host name %q has a label longer than 63 characters", s)
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("host name %q has a label that starts or ends with '-'", s)
		}
		for _, c := range []byte(label) {
			if c >= 0x80 {
				return fmt.Errorf("host name %q is not ASCII (write internationalized names in punycode, xn--)", s)
			}
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("host name %q has invalid character %q", s, c)
			}
		}
	}
	return nil
}

// checkRouteHost checks a route host (lowercased): empty, a DNS name, or
// "*." and a DNS name.
func checkRouteHost(h string) error {
	if h == "" {
		return nil
	}
	if strings.Contains(h, ":") {
		return fmt.Errorf("%q: a route host must not include a port", h)
	}
	if strings.HasSuffix(h, ".") {
		return fmt.Errorf("%q must not end with a dot", h)
	}
	name, wild := strings.CutPrefix(h, "*.")
	if strings.Contains(name, "*") {
		return fmt.Errorf("%q: '*' is allowed only as the whole first label, as in \"*.example.com\"", h)
	}
	if err := checkDNSName(name); err != nil {
		if wild {
			return fmt.Errorf("wildcard %q: %w", h, err)
		}
		return err
	}
	return nil
}

func checkTrustedProxy(s string) error {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return fmt.Errorf("%q is not a CIDR: %w", s, err)
		}
		if p != p.Masked() {
			return fmt.Errorf("%q has host bits set (did you mean %s?)", s, p.Masked())
		}
		return nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return fmt.Errorf("%q is not an IP address or CIDR", s)
	}
	if a.Zone() != "" {
		return fmt.Errorf("%q: zoned addresses are not supported", s)
	}
	return nil
}

func validClusterName(s string) bool {
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return s != ""
}

// readConfigFile reads a regular file named by the config, at most
// maxConfigFileSize bytes.
func readConfigFile(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%q is not a regular file", path)
	}
	if fi.Size() > maxConfigFileSize {
		return nil, fmt.Errorf("%q is larger than %d bytes", path, maxConfigFileSize)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxConfigFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxConfigFileSize {
		return nil, fmt.Errorf("%q is larger than %d bytes", path, maxConfigFileSize)
	}
	return b, nil
}

// writeCanonical writes v, of a Config field type, as "path=value" lines.
func writeCanonical(w io.Writer, v reflect.Value, path string) {
	switch v.Kind() {
	case reflect.Struct:
		for _, f := range yamlFields(v.Type()) {
			writeCanonical(w, v.Field(f.index), fieldPath(path, f.name))
		}
	case reflect.Slice:
		fmt.Fprintf(w, "%s.len=%d\n", path, v.Len())
		for i := range v.Len() {
			writeCanonical(w, v.Index(i), path+"["+strconv.Itoa(i)+"]")
		}
	case reflect.Pointer:
		if v.IsNil() {
			fmt.Fprintf(w, "%s=null\n", path)
			return
		}
		writeCanonical(w, v.Elem(), path)
	case reflect.String:
		fmt.Fprintf(w, "%s=%q\n", path, v.String())
	case reflect.Bool:
		fmt.Fprintf(w, "%s=%t\n", path, v.Bool())
	case reflect.Int, reflect.Int64:
		fmt.Fprintf(w, "%s=%d\n", path, v.Int())
	default:
		fmt.Fprintf(w, "%s=%v\n", path, v.Interface())
	}
}
